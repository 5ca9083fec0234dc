"""Packed models for the benchmark: which to run, how to get them onto the GPU, bit-exactness.

A packed model is named by a config (12 letters) or by an exported ``.mbu`` file. A config
without trained weights is benchmarked with random weights and random batch-norm
statistics (speed does not depend on the values; the statistics are scaled to the
accumulator range so that thresholds fall inside it and bit-exactness checks mean
something), exported with ``lightning_mbu.export.export_model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import LayerConfig
from ..layers import QConv2d, QConvTranspose2d
from ..model import MBUNet
from .report import model_name

#: Weight modes the packed backends run.
PACKED_MODES = {"binary", "masked"}


@dataclass(frozen=True)
class PackedSpec:
    """A packed model to benchmark: its config, and the file holding it (None: export a random one)."""

    config: LayerConfig
    path: Path | None = None

    @property
    def name(self) -> str:
        return model_name(self.config)


def file_config(path: str | Path) -> LayerConfig:
    """The layer config recorded in an exported ``.mbu`` file (the loader validates the whole file)."""
    from ..ops.format import load as load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    return LayerConfig.parse(load_file(path).model["config"])


def packed_spec(token: str) -> PackedSpec:
    """A ``--models`` entry naming a packed model: 12 letters, ``mbu:<12 letters>``, or a ``.mbu`` path."""
    if token.endswith(".mbu") or Path(token).is_file():
        return PackedSpec(file_config(token), Path(token))
    config = LayerConfig.parse(token.removeprefix("mbu:"))
    other = sorted(set(config.modes) - PACKED_MODES)
    if other:
        raise ValueError(f"--models {token!r}: the packed backend runs binary (B) and masked (M) layers; "
                         f"this config has {', '.join(other)}")
    return PackedSpec(config)


@torch.no_grad()
def random_mbunet(config: LayerConfig | str, base: int = 64, in_channels: int = 3, num_classes: int = 1,
                  seed: int = 0) -> MBUNet:
    """An eval-mode MBUNet of ``config`` with random weights and accumulator-scaled BN statistics."""
    torch.manual_seed(seed)
    net = MBUNet(config, in_channels=in_channels, num_classes=num_classes, base=base)
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if not (isinstance(conv, (QConv2d, QConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)):
            continue
        fan_in = conv.weight[0].numel() if isinstance(conv, QConv2d) else conv.in_channels
        spread = math.sqrt(fan_in)  # a sum of fan_in terms of +-1 (or 0) has about this spread
        bn.running_mean.normal_(0.0, 0.5 * spread)
        bn.running_var.uniform_(0.5, 2.0).mul_(fan_in)
        bn.weight.normal_(0.0, 1.0)  # negative scales too: both threshold directions get exercised
        bn.bias.normal_(0.0, 0.5)
    return net.eval()


def export_random(spec: PackedSpec, path: Path, base: int, in_channels: int, num_classes: int) -> Path:
    from ..export import export_model

    export_model(random_mbunet(spec.config, base, in_channels, num_classes), path)
    return path


def load(path: str | Path, backend: str, **options):
    from ..ops import load_packed

    return load_packed(path, backend=backend, **options)


@torch.no_grad()
def bit_exact(gpu_net, cpu_net, image: torch.Tensor) -> bool:
    """Whether the GPU engine's logits equal the CPU reference engine's, bit for bit, on ``image``."""
    ref = cpu_net(image.float().cpu())
    out = gpu_net(image)
    return bool(torch.equal(out.float().cpu(), ref.float().cpu()))
