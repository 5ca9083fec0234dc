"""lightning-mbu: Masked Binary U-Nets for segmentation, trained with Lightning, deployed on binary tensor cores."""

from importlib import import_module

from .callbacks import MBUCallback
from .config import LAYER_NAMES, LayerConfig, QuantSpec
from .model import MBUNet

__version__ = "0.1.0"

# Heavier parts load on first use, so `import lightning_mbu` stays quick.
_LAZY = {
    "SegmentationModule": "lightning_mbu.module",
    "SegmentationDataModule": "lightning_mbu.data",
    "load_packed": "lightning_mbu.ops",
}

__all__ = ["LAYER_NAMES", "LayerConfig", "MBUCallback", "MBUNet", "QuantSpec", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_mbu' has no attribute {name!r}")
