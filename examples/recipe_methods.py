"""Prototype of the quantized-training recipe's methods, for the accuracy study (moves into the package).

Every method here changes training only: the trained net is still sign(batch-norm(integer acc))
per binary layer, so ``export.fold`` turns it into the same integer thresholds, bit-exactly.

- ``ApproxSign``: sign forward; backward the Bi-Real Net "ApproxSign" derivative 2 - 2|x| on
  |x| < 1 (a triangle), instead of the hard-tanh STE's box. Same forward, so nothing to fold.
- Feature distillation: every activation's input (the batch-norm output the sign thresholds)
  is pulled towards the FP teacher's pre-ReLU value with the soft-target BCE of logit
  distillation: the student's +1/-1 should follow where the teacher's ReLU is on/off.
- ``ShiftedSign``: a learnable per-channel threshold before the sign; ``merge_shifts_`` folds it
  into the batch-norm bias before export. Note: after a batch-norm it is a reparametrisation of
  the bias with the same gradient (up to sign), so under Adam it only doubles that bias's step.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from lightning_mbu.distill import DistillationModule, distillation_loss
from lightning_mbu.model import MBUNet
from lightning_mbu.quant import SignActivation


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0).to(grad.dtype)


class ApproxSign(SignActivation):
    """Binary activation with the ApproxSign gradient (a SignActivation, so quantize_ keeps it)."""

    def forward(self, x):
        return _ApproxSign.apply(x)


class ShiftedSign(SignActivation):
    """sign(x - shift[c]) with a learnable per-channel shift (hard-tanh STE on x - shift)."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return super().forward(x - self.shift.view(1, -1, 1, 1).to(x.dtype))


def _bn_of(net: MBUNet, act_name: str) -> nn.BatchNorm2d:
    return net.get_submodule(act_name.rsplit(".", 1)[0]).bn


def replace_signs_(net: MBUNet, make) -> MBUNet:
    """Replace every activation of a quantized net by ``make(batchnorm_before_it)``."""
    if not net.is_quantized:
        raise ValueError("replace_signs_ needs a quantized MBUNet (its activations are signs)")
    for name, _ in list(net.activations()):
        parent, attr = name.rsplit(".", 1)
        setattr(net.get_submodule(parent), attr, make(_bn_of(net, name)).to(_bn_of(net, name).weight.device))
    return net


@torch.no_grad()
def merge_shifts_(net: MBUNet) -> MBUNet:
    """Move every ShiftedSign's shift into its batch-norm's bias (sign(bn(x) - s) = sign(bn'(x))), shift to 0."""
    for name, act in net.activations():
        if isinstance(act, ShiftedSign):
            _bn_of(net, name).bias.sub_(act.shift.to(_bn_of(net, name).bias.dtype))
            act.shift.zero_()
    return net


class FeatureTaps:
    """Forward pre-hooks that keep the input of every ``.act`` module of a net (pre-activation features)."""

    def __init__(self, net: MBUNet):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_pre_hook(partial(self._keep, name)) for name, m in net.activations()]

    def _keep(self, name, module, inputs):
        self.features[name] = inputs[0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def feature_distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the soft-target BCE of the student's pre-activations against the teacher's."""
    missing = sorted(set(teacher) - set(student))
    if missing:
        raise ValueError(f"feature distillation: the student has no activation {missing[0]}")
    return torch.stack([distillation_loss(student[k].float(), teacher[k].float()) for k in teacher]).mean()


class RecipeModule(DistillationModule):
    """DistillationModule + feature distillation, a chosen sign gradient and (optionally) learnable thresholds.

    The net is quantized by MBUCallback in its ``setup``; this module's ``setup`` runs after the
    callbacks', so it swaps the signs of the already-quantized net.
    """

    def __init__(self, teacher: str, feature_kd_weight: float = 1.0, sign_gradient: str = "approx",
                 learnable_threshold: bool = False, **kwargs):
        super().__init__(teacher=teacher, **kwargs)
        if sign_gradient not in ("ste", "approx"):
            raise ValueError(f"sign_gradient must be 'ste' or 'approx', got {sign_gradient!r}")
        # the teacher's ReLUs must not overwrite the pre-activations its taps keep
        for _, act in self.teacher.activations():
            act.inplace = False
        self._taps: tuple[FeatureTaps, FeatureTaps] | None = None

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.net.is_quantized:
            if hp.learnable_threshold:
                replace_signs_(self.net, lambda bn: ShiftedSign(bn.num_features))
            elif hp.sign_gradient == "approx":
                replace_signs_(self.net, lambda bn: ApproxSign())
        if stage == "fit" and hp.feature_kd_weight > 0 and self._taps is None:
            self._taps = (FeatureTaps(self.net), FeatureTaps(self.teacher))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        with torch.no_grad():
            target = self.teacher(x)
        task = self.loss(logits, y)
        kd = distillation_loss(logits.float(), target.float(), self.hparams.kd_temperature)
        loss = task + self.hparams.kd_weight * kd
        logs = {"train/loss": loss, "train/kd": kd}
        if self._taps is not None:
            feat = feature_distillation_loss(self._taps[0].features, self._taps[1].features)
            loss = loss + self.hparams.feature_kd_weight * feat
            logs.update({"train/loss": loss, "train/feature_kd": feat})
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss
