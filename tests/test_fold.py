"""Folding batch-norm + sign into integer thresholds, and the folded float net against the training graph."""

import pytest
import torch
import torch.nn.functional as F

from lightning_mbu import MBUNet, QuantSpec
from lightning_mbu.export import fold
from lightning_mbu.export.fold import fold_batchnorm, threshold
from random_nets import random_bn, randomize, sampled_configs


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n", [1, 9, 36, 577])
def test_threshold_reproduces_batchnorm_sign_on_every_reachable_accumulator(n, with_bias):
    gen = torch.Generator().manual_seed(n)
    c = 64
    bn = random_bn(c, gen)
    bias = torch.randn(c, generator=gen) * 3 if with_bias else None
    theta, direction = fold_batchnorm(bn, n, bias)
    acc = torch.arange(-n, n + 1, dtype=torch.float32).view(1, 1, -1, 1).expand(1, c, -1, 1)
    z = acc + (bias.view(1, c, 1, 1) if with_bias else 0)
    expected = bn(z) >= 0
    assert torch.equal(threshold(acc, theta, direction), expected)
    # the random statistics hit every case: rising, falling (negative scale), always-on and always-off
    on, off = theta == -(n + 1), theta == n + 1
    assert (direction == -1).any() and ((direction == 1) & ~on & ~off).any()
    assert on.any() and off.any() and (direction[on | off] == 1).all()


@pytest.mark.parametrize("config", sampled_configs(3, seed=1))
def test_folded_net_reproduces_training_graph_in_eval(config):
    torch.manual_seed(0)
    net = randomize(MBUNet(config, base=4, num_classes=2), seed=3)
    acts = []
    for _, act in net.activations():
        act.register_forward_hook(lambda m, i, o: acts.append(o))
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        logits = net(x)
    folded = fold(net)
    env = folded.run(x)
    # the training graph's sign outputs, in forward order: inc x2, down x2 each, then up_ct, up x2 per level
    names = [s.name for s in folded.steps if not s.name.endswith("pool")][:-1]
    assert len(names) == len(acts)
    for name, a in zip(names, acts):
        out = env[name][:, -a.shape[1]:] if name.startswith("up_ct") else env[name]
        assert torch.equal(out, a), name
    assert torch.allclose(folded(x), logits, atol=1e-5)


def test_fold_refuses_layers_without_a_bit_plane_form():
    with pytest.raises(ValueError, match=r"layers down2 \(int4\), up_ct1 \(fp\), up4 \(int8\):"):
        fold(MBUNet("B4BBFBBBBBB8", base=4).eval())
    with pytest.raises(ValueError, match=r"layers stem \(inc.conv2\) \(int2\):.*k-bit"):
        fold(MBUNet(QuantSpec("BBBBBBBBBBBB", stem="int2"), base=4).eval())
    with pytest.raises(ValueError, match="full-precision"):
        fold(MBUNet(None, base=4).eval())


def test_fold_uses_the_trained_masking_threshold():
    net = MBUNet("MMMMMMMMMMMM", base=4).eval()
    for _, q in net.masked_quantizers():
        q.t.fill_(0.9)
    layer = next(s for s in fold(net).steps if s.name == "down1.conv1")
    conv = net.down1.conv.conv1.conv
    assert torch.equal(layer.weight, conv.quantized_weight())
    assert (layer.weight == 0).float().mean() > 0.5  # t = 0.9 of the max zeroes most weights
    acc = F.conv2d(F.pad(torch.ones(1, 4, 3, 3), (1, 1, 1, 1), value=-1.0), layer.weight)
    assert torch.equal(layer.accumulate(torch.ones(1, 4, 3, 3)), acc)
