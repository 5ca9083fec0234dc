"""Read a SegmentationModule checkpoint without building the LightningModule (no optimizer, no data)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(hyper-parameters, the ``net.*`` weights without the prefix) of a SegmentationModule checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint of a SegmentationModule "
                         "(needs 'hyper_parameters' and 'state_dict')")
    weights = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return ckpt["hyper_parameters"], weights


def read_data_hparams(path: str | os.PathLike) -> dict:
    """The SegmentationDataModule hyper-parameters a Lightning checkpoint recorded (normalization, size, ...);
    ``{}`` when it was trained without one."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint: {e}") from e
    data = ckpt.get("datamodule_hyper_parameters") if isinstance(ckpt, dict) else None
    return dict(data) if isinstance(data, dict) else {}
