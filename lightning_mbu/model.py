"""MBUNet: the paper's U-Net (Fig. A.1 / A.2), full precision and quantized from one definition.

Full precision (a ``QuantSpec`` without config): ReLU activations, float weights -- the
FP32/FP16 baseline. Quantized (a config given): every activation is binary {-1, +1}, the
first conv and the final 1x1 conv stay full precision, the second input conv uses the
spec's ``stem`` mode (masked by default), and each of the 12 configurable layers uses the
mode its config names. Batch-norm + activation follow every transposed conv in both
modes so that a trained FP checkpoint can be quantized in place (MBUCallback).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import LAYER_NAMES, LayerConfig, QuantSpec
from .layers import QConv2d, QConvTranspose2d
from .ops.preprocess import PAD_MULTIPLE
from .quant import MaskedWeight, SignActivation, WeightQuantizer, get_weight_quantizer


@torch.no_grad()
def weight_states(convs) -> dict[str, float]:
    """Fraction of -1 / 0 / +1 values among the quantized weights of ``convs`` (QConv2d/QConvTranspose2d)."""
    flat = torch.cat([c.quantized_weight().flatten() for c in convs])
    n = flat.numel()
    return {"neg": (flat < 0).sum().item() / n, "zero": (flat == 0).sum().item() / n,
            "pos": (flat > 0).sum().item() / n}


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = QConv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout)
        self.conv2 = ConvBNAct(cout, cout)


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(cin, cout)


class UpSample(nn.Sequential):
    """2x2 stride-2 transposed conv + batch-norm + activation."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = QConvTranspose2d(cin, cout)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)


class MBUNet(nn.Module):
    def __init__(
        self,
        quant: QuantSpec | str | LayerConfig | dict | None = None,
        in_channels: int = 3,
        num_classes: int = 1,
        base: int = 64,
    ):
        """``quant``: a QuantSpec, or a layer config alone (the spec's other fields at their defaults)."""
        super().__init__()
        self.in_channels, self.num_classes, self.base = in_channels, num_classes, base
        w = [base * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.inc = DoubleConv(in_channels, w[0])
        self.down1, self.down2, self.down3, self.down4 = (Down(w[i], w[i + 1]) for i in range(4))
        self.up_ct1, self.up_ct2, self.up_ct3, self.up_ct4 = (UpSample(w[4 - i], w[3 - i]) for i in range(4))
        self.up1, self.up2, self.up3, self.up4 = (DoubleConv(w[4 - i], w[3 - i]) for i in range(4))
        self.outc = nn.Conv2d(w[0], num_classes, 1)
        self.quant = QuantSpec.coerce(quant)
        if self.quant.is_quantized:
            self.quantize_(self.quant)

    # -- structure -------------------------------------------------------------------------
    def layer_convs(self, name: str) -> list[QConv2d | QConvTranspose2d]:
        """The weight-bearing convs of configurable layer ``name`` (one of LAYER_NAMES)."""
        block = getattr(self, name)
        return [m for m in block.modules() if isinstance(m, (QConv2d, QConvTranspose2d))]

    @property
    def is_quantized(self) -> bool:
        return self.quant.is_quantized

    @property
    def config(self) -> LayerConfig | None:
        return self.quant.config

    @property
    def stem_mode(self) -> str:
        return self.quant.stem

    def hparams(self) -> dict:
        """Constructor arguments as plain values: ``MBUNet(**net.hparams())`` rebuilds this net's structure."""
        return {"quant": self.quant.as_dict(), "in_channels": self.in_channels, "num_classes": self.num_classes,
                "base": self.base}

    def activations(self) -> Iterator[tuple[str, nn.Module]]:
        for name, m in self.named_modules():
            if name.endswith(".act"):
                yield name, m

    # -- quantization ----------------------------------------------------------------------
    def quantize_(self, quant: QuantSpec | str | LayerConfig | dict) -> MBUNet:
        """Switch this net in place to binary activations and the weight modes of ``quant``.

        Parameters are untouched (an optimizer built before stays valid); quantizers already
        of the requested kind keep their state, so calling it twice is harmless.
        """
        quant = QuantSpec.coerce(quant)
        if not quant.is_quantized:
            raise ValueError("quantize_ needs a QuantSpec with a layer config (this one is full precision)")

        def make(mode: str) -> WeightQuantizer:
            if mode == "masked":
                return MaskedWeight(quant.t, quant.statistic)
            return get_weight_quantizer(mode)

        def assign(conv, mode):
            if conv.weight_quantizer.name != mode:
                conv.weight_quantizer = make(mode).to(conv.weight.device)
            if isinstance(conv, QConv2d):
                conv.pad_value = -1.0

        assign(self.inc.conv2.conv, quant.stem)
        for name, mode in quant.config.items():
            for conv in self.layer_convs(name):
                assign(conv, mode)
        for name, act in list(self.activations()):
            if not isinstance(act, SignActivation):
                parent, attr = name.rsplit(".", 1)
                setattr(self.get_submodule(parent), attr, SignActivation())
        self.quant = quant
        return self

    def masked_quantizers(self) -> Iterator[tuple[str, MaskedWeight]]:
        """(layer name, quantizer) for every masked conv, the stem's named ``stem``."""
        for name in ("stem", *LAYER_NAMES):
            convs = [self.inc.conv2.conv] if name == "stem" else self.layer_convs(name)
            for conv in convs:
                if isinstance(conv.weight_quantizer, MaskedWeight):
                    yield name, conv.weight_quantizer

    @torch.no_grad()
    def weight_state_fractions(self) -> dict[str, dict[str, float]]:
        """Fraction of -1 / 0 / +1 weights per masked layer (the paper's Fig. 3a)."""
        out = {}
        for name in ("stem", *LAYER_NAMES):
            convs = [self.inc.conv2.conv] if name == "stem" else self.layer_convs(name)
            masked = [c for c in convs if isinstance(c.weight_quantizer, MaskedWeight)]
            if masked:
                out[name] = weight_states(masked)
        return out

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(torch.cat([x4, self.up_ct1(x5)], dim=1))
        y = self.up2(torch.cat([x3, self.up_ct2(y)], dim=1))
        y = self.up3(torch.cat([x2, self.up_ct3(y)], dim=1))
        y = self.up4(torch.cat([x1, self.up_ct4(y)], dim=1))
        return self.outc(y)[..., :h, :w]

    def extra_repr(self) -> str:
        return f"config={self.config or 'full precision'}, stem={self.stem_mode if self.config else 'fp'}"
