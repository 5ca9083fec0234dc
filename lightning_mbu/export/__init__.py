"""Export a trained MBU-Net to a packed `.mbu` file: fold batch-norm into thresholds, pack bits, write.

``export_model(net, path)`` takes an MBUNet; ``export_checkpoint(ckpt, path)`` a Lightning
checkpoint of a SegmentationModule. The file format and its reader live in ``ops`` (``ops/format.py``,
``lightning_mbu.load_packed``): export depends on ops, never the other way round.
"""

from __future__ import annotations

import os
import warnings

from ..checkpoint import Checkpoint, load_checkpoint
from ..model import MBUNet
from cutlass_kernels.table import DEFAULT_ENCODING, check_encoding

from ..ops.format import save
from ..ops.graph import PackedNet
from ..ops.preprocess import NORMALIZATIONS, input_spec
from .fold import FoldedNet, fold
from .pack import pack_folded

__all__ = ["FoldedNet", "export_checkpoint", "export_model", "fold", "net_from_checkpoint", "pack_folded",
           "training_input"]


def export_model(net: MBUNet, path: str | os.PathLike, default_encoding: str = DEFAULT_ENCODING,
                 normalization: str = "none", train_size: tuple[int, int] | None = None) -> PackedNet:
    """Fold and pack a quantized MBUNet (eval semantics) and write it to ``path``; returns the PackedNet.

    ``normalization`` (the data module's rule the net was trained with, e.g. "image") and ``train_size``
    (the size it was trained at, or None) go into the file, so the packed model takes raw image pixels;
    with "none" it takes float images the caller normalised as in training.
    """
    check_encoding(default_encoding, "default_encoding")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    packed = pack_folded(fold(net))
    packed.default_encoding = default_encoding
    packed.input = input_spec(net.in_channels, normalization, packed.input["pad_multiple"], train_size)
    save(packed, path)
    return packed


def net_from_checkpoint(ckpt_path: str | os.PathLike | Checkpoint) -> MBUNet:
    """The MBUNet of a SegmentationModule checkpoint: its hyper-parameters and the ``net.*`` weights."""
    ckpt = ckpt_path if isinstance(ckpt_path, Checkpoint) else load_checkpoint(ckpt_path)
    if not ckpt.quant.is_quantized:
        raise ValueError(f"{ckpt.path}: a full-precision model (no layer config); only quantized MBU-Nets export")
    return ckpt.net()


def training_input(ckpt: Checkpoint, normalization: str | None = None) -> tuple[str, tuple[int, int] | None]:
    """(normalization, size) of the checkpoint's data module; ``normalization`` overrides the recorded rule.

    A checkpoint trained without SegmentationDataModule records neither: then "none" (the caller
    normalises), with a warning, unless ``normalization`` is given.
    """
    data = ckpt.data_hparams
    if normalization is None and "normalization" not in data:
        warnings.warn(f"{ckpt.path}: the checkpoint records no data module, so how training normalised images is "
                      "unknown: the model will take float images normalised by the caller (pass normalization, "
                      "--normalization, to store the rule)", stacklevel=2)
    size = data.get("size")
    size = None if size is None else (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return normalization or data.get("normalization", "none"), size


def export_checkpoint(ckpt_path: str | os.PathLike, path: str | os.PathLike, default_encoding: str = DEFAULT_ENCODING,
                      normalization: str | None = None) -> PackedNet:
    """Export a SegmentationModule checkpoint with the preprocessing its data module recorded."""
    ckpt = load_checkpoint(ckpt_path)
    net = net_from_checkpoint(ckpt)
    normalization, size = training_input(ckpt, normalization)
    return export_model(net, path, default_encoding, normalization, size)
