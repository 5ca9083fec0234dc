"""The activation measure behind the pre-training memory check: it equals what autograd really saves."""

import torch

from lightning_mbu.memory import activation_bytes, free_bytes
from lightning_mbu.config import QuantSpec
from lightning_mbu.model import MBUNet


def saved_on_cpu(net, size, batch):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.train()(torch.randn(batch, net.in_channels, *size))
    return sum(storages.values())


def test_meta_measure_equals_real_saved_tensors():
    for config in (None, "BBBBMMMMBBBB", "MMBB2248FFBB"):
        net = MBUNet(QuantSpec(config, stem="binary"), base=4)
        assert activation_bytes(net, (40, 24), 2) == saved_on_cpu(net, (40, 24), 2)


def test_scales_with_batch_and_pixels_and_handles_huge_sizes():
    net = MBUNet("BBBBMMMMBBBB", base=8)
    # quantized weight copies are saved once; activations grow with images and pixels
    one, two = activation_bytes(net, (64, 64), 1), activation_bytes(net, (64, 64), 2)
    assert activation_bytes(net, (64, 64), 4) - one == 3 * (two - one) > 0
    four_times_pixels = activation_bytes(net, (128, 128), 1) - one
    assert 0.95 * 3 * (two - one) < four_times_pixels < 3 * (two - one)  # less: weight-sized parts do not grow
    assert activation_bytes(net, (99999, 99999), 4) > 2**40  # shapes only: no terabyte is allocated


def test_free_memory_of_the_cpu_is_read():
    free = free_bytes(torch.device("cpu"))
    assert free is not None and 2**26 < free
