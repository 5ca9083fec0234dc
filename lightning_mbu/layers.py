"""Quantized conv and transposed conv: a weight quantizer and a padding value as attributes.

Binary convs pad their {-1, +1} input with -1 (bit 0 once packed), in training
and inference alike, so the packed engines compute exactly what was trained.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .quant import FullPrecision, WeightQuantizer


class QConv2d(nn.Conv2d):
    """Conv2d whose weight passes through ``weight_quantizer`` and whose input is padded with ``pad_value``."""

    def __init__(self, in_channels, out_channels, kernel_size=3, padding=1, bias=False, pad_value=0.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=0, bias=bias)
        self.pad = padding
        self.pad_value = pad_value
        self.weight_quantizer: WeightQuantizer = FullPrecision()

    def quantized_weight(self):
        return self.weight_quantizer(self.weight, out_dim=0)

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=self.pad_value)
        return F.conv2d(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", pad={self.pad}, pad_value={self.pad_value}"


class QConvTranspose2d(nn.ConvTranspose2d):
    """2x2 stride-2 transposed conv with a quantized weight (no padding: each output sees one input)."""

    def __init__(self, in_channels, out_channels, bias=False):
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2, bias=bias)
        self.weight_quantizer: WeightQuantizer = FullPrecision()

    def quantized_weight(self):
        # ConvTranspose2d weights are (in, out, kh, kw): output channels on axis 1
        return self.weight_quantizer(self.weight, out_dim=1)

    def forward(self, x):
        return F.conv_transpose2d(x, self.quantized_weight(), self.bias, stride=2)
