"""clcpmt: CLCP-MT and semi-supervised baselines for imbalanced medical image classification.

The Python API (clcpmt/api.py): `clcpmt.train`, `clcpmt.load` (-> Predictor with .predict / .evaluate),
`clcpmt.create_student`. Imported on first use, so that `import clcpmt` and `clcpmt --help` stay fast.
"""

from .version import __version__

__all__ = ["Predictor", "Run", "__version__", "create_student", "load", "train"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clcpmt' has no attribute '{name}'")
