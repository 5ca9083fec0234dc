"""Learning from a trained full-precision net: its weights as the start, its outputs as soft targets.

- ``load_fp_weights(net, checkpoint)``: copy a full-precision SegmentationModule checkpoint's
  weights (convs and batch-norms) into an MBUNet of the same width, before or after it is
  quantized. Only the masked quantizers' threshold buffers may be absent from the source.
- ``load_teacher(checkpoint)``: the frozen full-precision MBUNet of a checkpoint.
- ``distillation_loss``: pixel-wise BCE(student / T, sigmoid(teacher / T)) * T^2 on the logits.
- ``FeatureTaps`` + ``feature_distillation_loss``: the same soft-target BCE on every activation's
  input (the batch-norm output a binary net thresholds), so the student's +1/-1 follows where the
  teacher's ReLU is on/off. Costs a second set of saved activations per step.

``SegmentationModule(teacher=...)`` uses them; nothing here changes what a trained net computes,
so export folds a distilled net into the same integer thresholds as any other.
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F

from .checkpoint import NET_KEYS, Checkpoint, load_checkpoint
from .model import MBUNet


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


class FeatureTaps:
    """Forward pre-hooks keeping the input of every activation of a net (its pre-activation features).

    The taps hold the modules present when they are made: make them after the net is quantized.
    """

    def __init__(self, net: MBUNet):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_pre_hook(partial(self._keep, name)) for name, m in net.activations()]

    def _keep(self, name, module, inputs):
        self.features[name] = inputs[0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.features.clear()


def feature_distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the soft-target BCE of the student's pre-activations against the teacher's."""
    missing = sorted(set(teacher) - set(student))
    if missing:
        raise ValueError(f"feature distillation: the student has no activation {missing[0]}")
    return torch.stack([distillation_loss(student[k].float(), teacher[k].float()) for k in teacher]).mean()
