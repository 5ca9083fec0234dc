"""FP32 / FP16 PyTorch baselines: the same MBUNet, in the fastest plain-PyTorch form we know.

``inference_net`` rewrites a full-precision MBUNet for inference without changing its
function: batch-norm folded into the preceding conv (one pass over each activation
instead of three) and the explicit zero-padding of ``QConv2d`` replaced by the conv's
own padding (no padded copy of every activation). ``baseline_forward`` then casts it,
switches it to channels_last (NHWC, what cuDNN's tensor-core kernels read) and
optionally compiles it; the timing harness adds cuDNN autotuning and CUDA graphs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..layers import QConv2d, QConvTranspose2d
from ..model import MBUNet

#: How a baseline is run: "eager" (cuDNN, CUDA graph) or "compile" (torch.compile, CUDA graph).
VARIANTS = ("eager", "compile")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _plain(conv: nn.Module) -> nn.Module:
    """The torch conv computing what ``conv`` (a full-precision QConv2d / QConvTranspose2d) computes."""
    if isinstance(conv, QConvTranspose2d):
        plain = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                   bias=conv.bias is not None)
    else:
        if conv.pad_value != 0:
            raise ValueError(f"baseline: conv pads with {conv.pad_value}, only zero padding folds into the conv")
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.pad,
                          bias=conv.bias is not None)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if k in ("weight", "bias")})
    return plain


@torch.no_grad()
def inference_net(net: MBUNet) -> MBUNet:
    """An eval-mode copy of the full-precision ``net`` with every conv + batch-norm folded into one conv."""
    if net.is_quantized:
        raise ValueError(f"baselines run the full-precision net; this one is quantized ({net.config})")
    net = copy.deepcopy(net).eval()
    for module in list(net.modules()):
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, (QConv2d, QConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(_plain(conv).eval(), bn, transpose=isinstance(conv, QConvTranspose2d))
            module.bn = nn.Identity()
    return net


def baseline_forward(net: MBUNet, precision: str, variant: str = "eager", device="cuda",
                     compile_mode: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function of ``net`` as the ``precision`` baseline, run the ``variant`` way."""
    if precision not in DTYPES:
        raise ValueError(f"unknown baseline precision {precision!r}; valid: {', '.join(DTYPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown baseline variant {variant!r}; valid: {', '.join(VARIANTS)}")
    fast = inference_net(net).to(device=device, dtype=DTYPES[precision], memory_format=torch.channels_last)
    if variant == "compile":
        return torch.compile(fast, mode=compile_mode, dynamic=False)
    return fast
