"""Export a trained MBU-Net to a packed `.mbu` file: fold batch-norm into thresholds, pack bits, write.

``export_model(net, path)`` takes an MBUNet; ``export_checkpoint(ckpt, path)`` a Lightning
checkpoint of a SegmentationModule. ``lightning_mbu.load_packed`` reads the file back.
"""

from __future__ import annotations

import os

from ..checkpoint import load_checkpoint
from ..model import MBUNet
from ..ops.graph import ENCODINGS, PackedNet
from .fold import FoldedNet, fold
from .format import load, save
from .pack import pack_folded

__all__ = ["FoldedNet", "PackedNet", "export_checkpoint", "export_model", "fold", "load", "net_from_checkpoint",
           "pack_folded", "save"]


def export_model(net: MBUNet, path: str | os.PathLike, default_encoding: str = "xor") -> PackedNet:
    """Fold and pack a quantized MBUNet (eval semantics) and write it to ``path``; returns the PackedNet."""
    if default_encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {default_encoding!r}; valid: {', '.join(ENCODINGS)}")
    packed = pack_folded(fold(net))
    packed.default_encoding = default_encoding
    save(packed, path)
    return packed


def net_from_checkpoint(ckpt_path: str | os.PathLike) -> MBUNet:
    """The MBUNet of a SegmentationModule checkpoint: its hyper-parameters and the ``net.*`` weights."""
    ckpt = load_checkpoint(ckpt_path)
    if not ckpt.quant.is_quantized:
        raise ValueError(f"{ckpt_path}: a full-precision model (no layer config); only quantized MBU-Nets export")
    return ckpt.net()


def export_checkpoint(ckpt_path: str | os.PathLike, path: str | os.PathLike,
                      default_encoding: str = "xor") -> PackedNet:
    return export_model(net_from_checkpoint(ckpt_path), path, default_encoding)
