"""Quantizers: tiny custom-gradient functions wrapped as modules, looked up by name.

Weight quantizers are ``nn.Module``s so that their state (the masking threshold
factor ``t``) travels with the model's ``state_dict`` and a checkpoint exports
exactly the weights it was trained with.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DEFAULT_T, STATISTICS


class _SignSTE(torch.autograd.Function):
    """sign(x) with sign(0) = +1; gradient passed where |x| <= 1 (hard-tanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _RoundSTE(torch.autograd.Function):
    """Forward a precomputed quantized value, backward the identity, clipped to |w| <= clip."""

    @staticmethod
    def forward(ctx, w, q, clip):
        ctx.save_for_backward(w, clip)
        return q

    @staticmethod
    def backward(ctx, grad):
        w, clip = ctx.saved_tensors
        return grad * (w.abs() <= clip).to(grad.dtype), None, None


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def _per_channel(w: torch.Tensor, reduce: str, dim: int = 0) -> torch.Tensor:
    """A per-output-channel statistic of |w|, shaped to broadcast against w."""
    dims = [d for d in range(w.dim()) if d != dim]
    a = w.detach().abs()
    stat = a.mean(dim=dims, keepdim=True) if reduce == "mean" else a.amax(dim=dims, keepdim=True)
    return stat


class WeightQuantizer(nn.Module):
    """Base class. ``out_dim`` is the weight's output-channel axis (1 for transposed convs)."""

    name = "base"
    #: True where the quantized weights are exactly integers in {-1, 0, +1} (exportable to bits)
    ternary = False

    def forward(self, w: torch.Tensor, out_dim: int = 0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.name


class FullPrecision(WeightQuantizer):
    name = "fp"

    def forward(self, w, out_dim=0):
        return w


class BinaryWeight(WeightQuantizer):
    """w -> {-1, +1}; batch-norm after each conv absorbs the scale."""

    name = "binary"
    ternary = True

    def forward(self, w, out_dim=0):
        return sign_ste(w)


class MaskedWeight(WeightQuantizer):
    """w -> {-1, 0, +1}: zero where |w| <= t * stat(|w|) per output channel.

    ``statistic="mean"`` is the ternary-weight-network rule (t around 0.7),
    ``"max"`` is uniform ternary rounding (t = 0.5 rounds w / max|w| to the
    nearest of -1, 0, 1), which yields the 80-95% zeros the paper reports.
    ``t`` is a buffer so MBUCallback can schedule it and checkpoints keep it.
    """

    name = "masked"
    ternary = True

    def __init__(self, t: float = DEFAULT_T, statistic: str = "max"):
        super().__init__()
        if statistic not in STATISTICS:
            raise ValueError(f"MaskedWeight statistic must be 'mean' or 'max', got {statistic!r}")
        self.statistic = statistic
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, w, out_dim=0):
        thr = self.t * _per_channel(w, self.statistic, out_dim)
        q = torch.where(w.detach().abs() <= thr, torch.zeros_like(w), torch.sign(w.detach()))
        return _RoundSTE.apply(w, q, torch.ones((), device=w.device, dtype=w.dtype))

    def extra_repr(self) -> str:
        return f"masked, t={float(self.t):.3g}, statistic={self.statistic}"


class KBitWeight(WeightQuantizer):
    """Symmetric per-channel k-bit weights: round(w / s) * s, s = max|w| / (2^(k-1) - 1)."""

    ternary = False

    def __init__(self, bits: int):
        super().__init__()
        if bits not in (2, 4, 8):
            raise ValueError(f"KBitWeight supports 2, 4 or 8 bits, got {bits}")
        self.bits = bits
        self.name = f"int{bits}"

    def forward(self, w, out_dim=0):
        levels = 2 ** (self.bits - 1) - 1
        scale = (_per_channel(w, "max", out_dim) / levels).clamp_min(1e-12)
        q = torch.clamp(torch.round(w.detach() / scale), -levels, levels) * scale
        clip = _per_channel(w, "max", out_dim)
        return _RoundSTE.apply(w, q, clip)


WEIGHT_QUANTIZERS = {
    "fp": FullPrecision,
    "binary": BinaryWeight,
    "masked": MaskedWeight,
    "int2": lambda: KBitWeight(2),
    "int4": lambda: KBitWeight(4),
    "int8": lambda: KBitWeight(8),
}


def get_weight_quantizer(spec: str | WeightQuantizer | None, **kwargs) -> WeightQuantizer:
    """A weight quantizer from a name in ``WEIGHT_QUANTIZERS`` or an instance (returned as is)."""
    if spec is None:
        return FullPrecision()
    if isinstance(spec, WeightQuantizer):
        return spec
    if spec not in WEIGHT_QUANTIZERS:
        raise ValueError(f"unknown weight quantizer {spec!r}; valid: {', '.join(WEIGHT_QUANTIZERS)}")
    return WEIGHT_QUANTIZERS[spec](**kwargs)


class _ApproxSign(_SignSTE):
    """_SignSTE's forward; gradient 2 - 2|x| on |x| < 1 (Bi-Real Net's ApproxSign, a triangle)."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0).to(grad.dtype)


class SignActivation(nn.Module):
    """Binary activation {-1, +1} with the hard-tanh straight-through gradient."""

    def forward(self, x):
        return sign_ste(x)


class ApproxSign(SignActivation):
    """Binary activation with the ApproxSign gradient: the same forward, so export folds it unchanged.

    A SignActivation, so ``MBUNet.quantize_`` keeps it in place.
    """

    def forward(self, x):
        return _ApproxSign.apply(x)


ACTIVATIONS = {"sign": SignActivation, "relu": lambda: nn.ReLU(inplace=True)}
#: the backward pass of a binary activation: hard-tanh straight-through ("ste") or ApproxSign ("approx")
SIGN_GRADIENTS = {"ste": SignActivation, "approx": ApproxSign}


def set_sign_gradient_(net: nn.Module, name: str) -> nn.Module:
    """Give every binary activation inside ``net`` the sign gradient ``name`` (in place; forward unchanged)."""
    if name not in SIGN_GRADIENTS:
        raise ValueError(f"unknown sign gradient {name!r}; valid: {', '.join(SIGN_GRADIENTS)}")
    cls = SIGN_GRADIENTS[name]
    for module_name, module in list(net.named_modules()):
        if module_name and isinstance(module, SignActivation) and type(module) is not cls:
            parent, _, attr = module_name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, cls())
    return net


def get_activation(spec: str | nn.Module) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    if spec not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[spec]()
