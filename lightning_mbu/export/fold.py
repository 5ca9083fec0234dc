"""Fold an MBUNet into integer thresholds, and run the folded net in float: the packed engines' ground truth.

Each binary layer (conv or transposed conv, then batch-norm, then sign) becomes exact integer
arithmetic: its output is +1 iff ``acc >= theta`` (direction +1) or ``acc <= theta`` (-1), with
``acc`` the integer dot product of +-1 activations and {-1, 0, +1} weights. ``theta`` is read off
the trained batch-norm itself, evaluated in eval mode on every reachable ``acc``, so the folded
net decides exactly as the training graph's float batch-norm does on those integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LAYER_NAMES
from ..model import MBUNet
from ..ops.float_ops import final_conv_float, first_conv_float
from ..ops.graph import PLANES
from ..ops.preprocess import PAD_MULTIPLE


def threshold(acc: torch.Tensor, theta: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Bits of a binary layer from its exact accumulator (channel axis 1)."""
    t, d = theta[None, :, None, None], direction[None, :, None, None]
    return torch.where(d > 0, acc >= t, acc <= t)


@torch.no_grad()
def fold_batchnorm(bn: nn.BatchNorm2d, n: int, conv_bias: torch.Tensor | None = None):
    """``(theta, direction)`` int64/int8 per channel for ``sign(bn(acc + bias))`` over integers ``|acc| <= n``.

    Bisection on the eval-mode batch-norm itself (a float affine map, so monotone in ``acc``).
    Always-on channels get ``(-(n + 1), +1)``, always-off ones ``(n + 1, +1)``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"batch-norm {bn} has no running statistics; it cannot be folded for inference")
    bias = 0.0 if conv_bias is None else conv_bias.detach().float()

    def on(acc: torch.Tensor) -> torch.Tensor:
        z = (acc.float() + bias)[None, :, None]
        return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)[0, :, 0] >= 0

    c = bn.num_features
    lo, hi = torch.full((c,), -n, dtype=torch.int64), torch.full((c,), n, dtype=torch.int64)
    lo_on, hi_on = on(lo), on(hi)
    # invariant for changing channels: on(lo) == lo_on != on(hi); shrink to adjacent integers
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        same = on(mid) == lo_on
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    rising, falling = hi_on & ~lo_on, lo_on & ~hi_on
    theta = torch.where(rising, hi, torch.where(falling, lo, torch.where(lo_on, -(n + 1), n + 1)))
    direction = torch.where(falling, -1, 1)
    return theta, direction.to(torch.int8)


@dataclass
class FoldedFirst:
    name: str
    src: str
    weight: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    pad_value: float

    def __call__(self, env):
        return first_conv_float(env[self.src], self.weight, self.scale, self.shift, self.pad_value) * 2.0 - 1.0


@dataclass
class FoldedPool:
    name: str
    src: str

    def __call__(self, env):
        return F.max_pool2d(env[self.src], 2)


@dataclass
class FoldedLayer:
    """A binary layer in float: {-1,0,+1} weights on +-1 inputs, exact integer ``acc``, threshold."""

    name: str
    src: str
    mode: str
    weight: torch.Tensor  # conv: (Cout, Cin, 3, 3); transposed conv: (Cin, Cout, 2, 2)
    theta: torch.Tensor
    direction: torch.Tensor
    skip: str | None = None  # set for a transposed conv, whose output follows the skip tensor

    @property
    def transposed(self) -> bool:
        return self.skip is not None

    @property
    def n(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight[0].numel()

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, stride=2)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), value=-1.0), self.weight)

    def __call__(self, env):
        y = threshold(self.accumulate(env[self.src]), self.theta, self.direction) * 2.0 - 1.0
        return torch.cat([env[self.skip], y], dim=1) if self.transposed else y


@dataclass
class FoldedFinal:
    name: str
    src: str
    weight: torch.Tensor  # (classes, Cin)
    bias: torch.Tensor

    def __call__(self, env):
        return final_conv_float(env[self.src], self.weight, self.bias)


class FoldedNet(nn.Module):
    """The folded MBU-Net on +-1 floats: ``forward`` gives logits, ``run`` every stage's output.

    Its steps have the packed graph's stage names, sources and order (docs/format.md).
    """

    def __init__(self, steps: list, model: dict, pad_multiple: int = PAD_MULTIPLE):
        super().__init__()
        self.steps, self.model, self.pad_multiple = steps, model, pad_multiple

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        env = {"input": F.pad(x.float(), (0, (-w) % self.pad_multiple, 0, (-h) % self.pad_multiple))}
        for step in self.steps:
            env[step.name] = step(env)
        return env

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[self.steps[-1].name][..., : x.shape[-2], : x.shape[-1]]


def _check_exportable(net: MBUNet) -> None:
    modes = {"stem (inc.conv2)": net.inc.conv2.conv.weight_quantizer.name}
    modes.update({n: net.layer_convs(n)[0].weight_quantizer.name for n in LAYER_NAMES})
    bad = [f"{n} ({m})" for n, m in modes.items() if m not in PLANES]
    if bad:
        raise ValueError(
            f"cannot export layers {', '.join(bad)}: only binary (B) and masked (M) layers have a bit-plane "
            "form; k-bit (2/4/8) and full-precision (F) layers are not supported by the packed format"
        )


def _bn_layer(name: str, src: str, conv, bn, skip: str | None = None) -> FoldedLayer:
    mode = conv.weight_quantizer.name
    w = conv.quantized_weight().detach().float()
    if not torch.isin(w, torch.tensor([-1.0, 0.0, 1.0])).all() or (mode == "binary" and (w == 0).any()):
        raise ValueError(f"layer {name}: quantized weights are not {mode} values")
    n = w.shape[0] if skip is not None else w[0].numel()
    theta, direction = fold_batchnorm(bn, n, conv.bias)
    return FoldedLayer(name, src, mode, w, theta, direction, skip)


@torch.no_grad()
def fold(net: MBUNet) -> FoldedNet:
    """Fold a quantized MBUNet (eval semantics: running batch-norm statistics) into a FoldedNet."""
    if not isinstance(net, MBUNet):
        raise TypeError(f"fold needs an MBUNet, got {type(net).__name__}")
    if not net.is_quantized:
        raise ValueError("a full-precision MBUNet has no packed form; export a quantized one (config given)")
    _check_exportable(net)
    first = net.inc.conv1
    scale = (first.bn.weight / torch.sqrt(first.bn.running_var + first.bn.eps)).detach().float()
    shift = (first.bn.bias - first.bn.running_mean * scale).detach().float()
    if first.conv.bias is not None:
        shift = shift + first.conv.bias.detach().float() * scale
    steps: list = [FoldedFirst("inc.conv1", "input", first.conv.weight.detach().float().clone(),
                               scale, shift, float(first.conv.pad_value))]
    steps.append(_bn_layer("inc.conv2", "inc.conv1", net.inc.conv2.conv, net.inc.conv2.bn))
    skips, prev = ["inc.conv2"], "inc.conv2"
    for i in range(1, 5):
        block = getattr(net, f"down{i}")
        steps.append(FoldedPool(f"down{i}.pool", prev))
        steps.append(_bn_layer(f"down{i}.conv1", f"down{i}.pool", block.conv.conv1.conv, block.conv.conv1.bn))
        steps.append(_bn_layer(f"down{i}.conv2", f"down{i}.conv1", block.conv.conv2.conv, block.conv.conv2.bn))
        prev = f"down{i}.conv2"
        skips.append(prev)
    for i in range(1, 5):
        ct, block = getattr(net, f"up_ct{i}"), getattr(net, f"up{i}")
        steps.append(_bn_layer(f"up_ct{i}", prev, ct.conv, ct.bn, skip=skips[4 - i]))
        steps.append(_bn_layer(f"up{i}.conv1", f"up_ct{i}", block.conv1.conv, block.conv1.bn))
        steps.append(_bn_layer(f"up{i}.conv2", f"up{i}.conv1", block.conv2.conv, block.conv2.bn))
        prev = f"up{i}.conv2"
    outc = net.outc
    bias = outc.bias.detach().float() if outc.bias is not None else torch.zeros(outc.out_channels)
    steps.append(FoldedFinal("outc", prev, outc.weight.detach().float()[:, :, 0, 0].clone(), bias))
    model = {"in_channels": net.in_channels, "num_classes": net.num_classes, "base": net.base,
             "config": str(net.config), "stem_mode": net.stem_mode}
    return FoldedNet(steps, model)
