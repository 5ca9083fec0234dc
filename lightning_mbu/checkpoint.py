"""Read a SegmentationModule checkpoint once, without building the LightningModule (no optimizer, no data).

The one reader that ``eval``, ``info``, ``export``, ``predict`` and distillation use.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LEGACY_KEYS, QuantSpec

#: MBUNet constructor arguments a SegmentationModule keeps in its hyper-parameters (besides the QuantSpec)
NET_KEYS = ("in_channels", "num_classes", "base")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    hparams: dict
    #: the ``net.*`` weights without the prefix
    weights: dict[str, torch.Tensor]
    #: the SegmentationDataModule hyper-parameters it recorded; {} when trained without one
    data_hparams: dict

    @property
    def quant(self) -> QuantSpec:
        return QuantSpec.from_hparams(self.hparams)

    def net_kwargs(self) -> dict:
        """``MBUNet(**ckpt.net_kwargs())`` builds the net these weights belong to (old checkpoints too)."""
        return {"quant": self.quant, **{k: self.hparams[k] for k in NET_KEYS if k in self.hparams}}

    def net(self):
        """The MBUNet of this checkpoint with its weights, in eval mode (a mismatch names the file)."""
        from .model import MBUNet

        net = MBUNet(**self.net_kwargs())
        try:
            net.load_state_dict(self.weights)
        except RuntimeError as e:
            raise ValueError(f"{self.path}: its weights do not fit MBUNet({self.quant.config}, "
                             f"base={self.hparams.get('base')}): {e}") from e
        return net.eval()

    def module_kwargs(self) -> dict:
        """SegmentationModule arguments, with older checkpoints' flat quantization keys folded into ``quant``."""
        flat = ("config", *LEGACY_KEYS)
        return {**{k: v for k, v in self.hparams.items() if k not in flat}, "quant": self.quant.as_dict()}


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load refused a file, in words that never suggest loading it unsafely."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(error, RuntimeError) and "zip archive" in str(error):
        return "the file is truncated or corrupted (not a complete PyTorch archive)"
    if isinstance(error, pickle.UnpicklingError):
        return "not a PyTorch checkpoint, or one holding objects other than tensors and plain values (not loaded)"
    return f"not readable as a PyTorch checkpoint ({type(error).__name__})"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a SegmentationModule checkpoint safely (``weights_only``: tensors and plain values, never code).

    Any other file (missing, empty, truncated, random bytes, another program's) raises one error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message advises weights_only=False: unsafe for an unknown file
        raise ValueError(f"{path} is not a lightning-mbu checkpoint: {_unreadable(path, e)}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ValueError(f"{path} is not a lightning-mbu checkpoint: it holds no SegmentationModule "
                         "'state_dict' and 'hyper_parameters'")
    weights = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    data = ckpt.get("datamodule_hyper_parameters")
    return Checkpoint(path, dict(ckpt["hyper_parameters"]), weights, dict(data) if isinstance(data, dict) else {})


def load_module(ckpt: Checkpoint):
    """The SegmentationModule of a checkpoint read by ``load_checkpoint``, in eval mode, on the CPU."""
    from .module import SegmentationModule

    try:
        module = SegmentationModule(**ckpt.module_kwargs())
    except TypeError as e:  # hyper-parameters of another LightningModule
        raise ValueError(f"{ckpt.path} is not a lightning-mbu checkpoint: {e}") from None
    module.net.load_state_dict(ckpt.net().state_dict())
    return module.eval()
