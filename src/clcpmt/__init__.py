"""clcpmt: CLCP-MT and semi-supervised baselines for imbalanced medical image classification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clcpmt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
