"""Random nets shared by the export, packed-engine and CUDA tests: random batch-norm statistics that
reach every folding case (rising, falling, always-on, always-off) and sampled layer configs."""

import random

import torch
from torch import nn

from lightning_mbu import LAYER_NAMES, MBUNet


def random_bn(c: int, gen: torch.Generator, zero_scale: int = 2) -> nn.BatchNorm2d:
    """A batch-norm with random statistics; ``zero_scale`` channels get scale 0 (constant output)."""
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 4, generator=gen)
        bn.running_var.uniform_(0.2, 9, generator=gen)
        bn.weight.normal_(0, 1, generator=gen)
        bn.bias.normal_(0, 2, generator=gen)
        bn.weight[:zero_scale] = 0
        bn.bias[:zero_scale] = torch.tensor([1.0, -1.0])[: min(2, zero_scale)]
    return bn



def randomize(net: MBUNet, seed: int) -> MBUNet:
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(random_bn(m.num_features, gen, zero_scale=min(2, m.num_features // 2)).state_dict())
    return net.eval()


def sampled_configs(k: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["BBBBBBBBBBBB", "MMMMMMMMMMMM"] + ["".join(rng.choice("BM") for _ in LAYER_NAMES) for _ in range(k)]


def calibrate(net: MBUNet, x: torch.Tensor) -> MBUNet:
    """Batch-norm statistics of the batch ``x`` (a forward pass in train mode, cumulative averages): a random net
    whose masks depend on the image, as a trained one's do (random statistics often give constant masks)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()
