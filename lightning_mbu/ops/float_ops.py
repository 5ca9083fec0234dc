"""The two float layers of a packed net, in torch: shared by the CPU engine and the export's folded net."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def first_conv_preactivation(x, weight, scale, shift, pad_value: float) -> torch.Tensor:
    """The float first layer before its sign: 3x3 conv, folded batch-norm ``z * scale + shift`` (in x's dtype:
    float64 inputs give the reference that float32/FP16 kernels are judged against near the threshold)."""
    z = F.conv2d(F.pad(x, (1, 1, 1, 1), value=pad_value), weight)
    return z * scale[:, None, None] + shift[:, None, None]


def first_conv_float(x, weight, scale, shift, pad_value: float) -> torch.Tensor:
    """The float first layer: ``first_conv_preactivation``'s sign as a bool (+1)."""
    return first_conv_preactivation(x, weight, scale, shift, pad_value) >= 0


def final_conv_float(pm1, weight, bias) -> torch.Tensor:
    """The float 1x1 conv from +-1 activations ``(N, C, H, W)`` to logits."""
    return F.conv2d(pm1, weight[:, :, None, None], bias)
