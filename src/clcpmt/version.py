"""The installed package's version (setuptools-scm style metadata; a source tree that was not installed says so)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clcpmt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
