"""Gap-closing options for quantized nets: start from a trained full-precision net, learn from it.

- ``load_fp_weights(net, checkpoint)``: copy a full-precision SegmentationModule checkpoint's
  weights (convs and batch-norms) into an MBUNet of the same width, before or after it is
  quantized. Only the masked quantizers' threshold buffers may be absent from the source.
- ``DistillationModule``: a SegmentationModule whose training loss adds a pixel-wise
  distillation term, BCE(student / T, sigmoid(teacher / T)) * T^2, from a frozen
  full-precision teacher. It trains with MBUCallback like any SegmentationModule.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .checkpoint import NET_KEYS, Checkpoint, load_checkpoint
from .model import MBUNet
from .module import SegmentationModule


def read_fp_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A full-precision SegmentationModule checkpoint (a quantized one raises)."""
    ckpt = load_checkpoint(path)
    if ckpt.quant.is_quantized:
        raise ValueError(f"{path}: a quantized model (config {ckpt.quant.config}); the teacher must be full precision")
    return ckpt


def load_fp_weights(net: MBUNet, checkpoint: str | os.PathLike) -> MBUNet:
    """Initialise ``net`` from a full-precision checkpoint of the same width (in place)."""
    ckpt = read_fp_checkpoint(checkpoint)
    hp = ckpt.hparams
    for k in NET_KEYS:
        if k in hp and hp[k] != getattr(net, k):
            raise ValueError(f"{checkpoint}: {k}={hp[k]} but the net to initialise has {k}={getattr(net, k)}")
    missing, unexpected = net.load_state_dict(ckpt.weights, strict=False)
    # a masked quantizer's threshold factor is the only state a full-precision net lacks
    missing = [k for k in missing if not k.endswith("weight_quantizer.t")]
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not fit the net (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return net


def load_teacher(checkpoint: str | os.PathLike) -> MBUNet:
    """The frozen full-precision MBUNet of a checkpoint, in eval mode."""
    ckpt = read_fp_checkpoint(checkpoint)
    net = MBUNet(**ckpt.net_kwargs())
    net.load_state_dict(ckpt.weights)
    return net.eval().requires_grad_(False)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise BCE of the student's logits against the teacher's soft targets, scaled by T^2."""
    t = temperature
    return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t


class DistillationModule(SegmentationModule):
    """SegmentationModule + distillation from a full-precision teacher checkpoint.

    Args:
        teacher: path of a full-precision SegmentationModule checkpoint.
        kd_weight: weight of the distillation term added to the task loss (BCE + Dice).
        kd_temperature: temperature T of the soft targets.
        init_from_teacher: start the student from the teacher's weights (same width needed).
        **kwargs: SegmentationModule arguments (quant, base, lr, ...).
    """

    def __init__(self, teacher: str, kd_weight: float = 1.0, kd_temperature: float = 1.0,
                 init_from_teacher: bool = True, **kwargs):
        super().__init__(**kwargs)
        if kd_weight < 0 or kd_temperature <= 0:
            raise ValueError(f"kd_weight must be >= 0 and kd_temperature > 0, got {kd_weight}, {kd_temperature}")
        if init_from_teacher:
            load_fp_weights(self.net, teacher)
        # a tuple keeps the teacher out of parameters(), state_dict() and checkpoints
        self._teacher = (load_teacher(teacher),)

    @property
    def teacher(self) -> MBUNet:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        with torch.no_grad():
            target = self.teacher(x)
        task = self.loss(logits, y)
        kd = distillation_loss(logits.float(), target.float(), self.hparams.kd_temperature)
        loss = task + self.hparams.kd_weight * kd
        self.log_dict({"train/loss": loss, "train/kd": kd}, on_step=True, on_epoch=True, prog_bar=True,
                      batch_size=len(x))
        return loss
