"""lightning-mbu: Masked Binary U-Nets for segmentation, trained with Lightning, deployed on binary tensor cores."""

from importlib import import_module

__version__ = "0.1.0"

# Every public name loads on first use (PEP 562), so `import lightning_mbu.ops` (inference) pulls in
# no Lightning, optuna or matplotlib, and `import lightning_mbu` stays quick.
_LAZY = {
    "LAYER_NAMES": "lightning_mbu.config",
    "LayerConfig": "lightning_mbu.config",
    "QuantSpec": "lightning_mbu.config",
    "MBUNet": "lightning_mbu.model",
    "MBUCallback": "lightning_mbu.callbacks",
    "SegmentationModule": "lightning_mbu.module",
    "SegmentationDataModule": "lightning_mbu.data",
    "load_packed": "lightning_mbu.ops",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'lightning_mbu' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
