"""clcpmt: CLCP-MT and semi-supervised baselines for imbalanced medical image classification.

The Python API (clcpmt/api.py): `clcpmt.train`, `clcpmt.load` (-> Predictor with .predict / .evaluate),
`clcpmt.create_student`, and the errors they raise for a bad setting or bad input (`clcpmt.ConfigError`,
`clcpmt.DataError`, both ValueErrors whose message names the key, file or row). Imported on first use, so
that `import clcpmt` and `clcpmt --help` stay fast.
"""

from .version import __version__

__all__ = [
    "ConfigError",
    "DataError",
    "Predictor",
    "Run",
    "__version__",
    "create_student",
    "load",
    "run_config",
    "train",
]


def __getattr__(name: str) -> object:
    if name == "ConfigError":  # the errors without torch: `except clcpmt.ConfigError` costs no import of the API
        from .config import ConfigError

        return ConfigError
    if name == "DataError":
        from .data.readers import DataError

        return DataError
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clcpmt' has no attribute '{name}'")
