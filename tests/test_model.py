import pytest
import torch
import torch.nn.functional as F

from lightning_mbu import LAYER_NAMES, MBUNet, QuantSpec
from lightning_mbu.layers import QConv2d, QConvTranspose2d
from lightning_mbu.quant import MaskedWeight, SignActivation


@pytest.mark.parametrize("config", [None, "BBBBMMMMBBBB", "MMMMMMMMMMMM", "8844BBBB2BMB"])
@pytest.mark.parametrize("size", [(97, 131), (16, 16), (33, 17)])
def test_forward_returns_logits_of_input_size(config, size):
    torch.manual_seed(0)
    net = MBUNet(config, base=4, num_classes=2).eval()
    x = torch.randn(2, 3, *size)
    y = net(x)
    assert y.shape == (2, 2, *size)
    assert torch.isfinite(y).all()


def test_binary_convs_see_minus_one_padding():
    net = MBUNet("BBBBBBBBBBBB", base=4).eval()
    conv = net.down1.conv.conv1.conv
    seen = {}
    conv.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], y=out))
    net(torch.randn(1, 3, 32, 32))
    x = seen["x"]
    assert set(x.unique().tolist()) <= {-1.0, 1.0}
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), value=-1.0), torch.sign(conv.weight) + (conv.weight == 0))
    assert torch.equal(seen["y"], expected)
    # and differs from zero padding on this input, so the test can tell the two apart
    assert not torch.equal(expected, F.conv2d(x, torch.sign(conv.weight), padding=1))


def test_activations_are_binary_everywhere_in_quantized_net():
    net = MBUNet("MBMBMBMBMBMB", base=4).eval()
    outs = []
    for _, act in net.activations():
        assert isinstance(act, SignActivation)
        act.register_forward_hook(lambda m, i, o: outs.append(o))
    net(torch.randn(1, 3, 32, 32))
    assert len(outs) == 2 + 4 * 2 + 4 + 4 * 2  # inc, down, up_ct, up
    assert all(set(o.unique().tolist()) <= {-1.0, 1.0} for o in outs)


def test_layer_modes_follow_config_and_fixed_layers():
    net = MBUNet("BBBBMMMMBB48", base=4)
    assert net.inc.conv1.conv.weight_quantizer.name == "fp" and net.inc.conv1.conv.pad_value == 0
    assert net.inc.conv2.conv.weight_quantizer.name == "masked"
    for name, mode in net.config.items():
        convs = net.layer_convs(name)
        assert len(convs) == (1 if name.startswith("up_ct") else 2)
        assert all(c.weight_quantizer.name == mode for c in convs)
        assert all(isinstance(c, QConvTranspose2d if name.startswith("up_ct") else QConv2d) for c in convs)
    assert [n for n, _ in net.masked_quantizers()] == ["stem", "up_ct1", "up_ct2", "up_ct3", "up_ct4"]


def test_full_precision_net_matches_reference_unet_size():
    net = MBUNet()
    # the reference U-Net (base 64, transposed-conv upsampling) has 31.03M parameters;
    # the batch-norms after the four transposed convs add 2 * (512 + 256 + 128 + 64)
    assert sum(p.numel() for p in net.parameters()) == 31_036_673 + 2 * 960
    assert not net.is_quantized
    assert all(isinstance(a, torch.nn.ReLU) for _, a in net.activations())


def test_quantize_in_place_keeps_parameters_and_is_idempotent():
    net = MBUNet(base=4)
    params_before = {n: p for n, p in net.named_parameters()}
    net.quantize_(QuantSpec("BBBBMMMMBBBB", t=0.3))
    assert {n: p for n, p in net.named_parameters()} == params_before
    q = net.up_ct1.conv.weight_quantizer
    q.t.fill_(0.42)
    net.quantize_("BBBBMMMMBBBB")
    assert net.up_ct1.conv.weight_quantizer is q and float(q.t) == pytest.approx(0.42)
    assert isinstance(q, MaskedWeight)


def test_weight_state_fractions_sum_to_one():
    net = MBUNet("MMMMBBBBBBBB", base=4)
    stats = net.weight_state_fractions()
    assert set(stats) == {"stem", "down1", "down2", "down3", "down4"}
    for s in stats.values():
        assert s["neg"] + s["zero"] + s["pos"] == pytest.approx(1.0)
        assert s["zero"] > 0


def test_gradients_reach_every_configurable_layer():
    torch.manual_seed(0)
    net = MBUNet("MBMBMBMBMBMB", base=4)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    for name in LAYER_NAMES:
        for conv in net.layer_convs(name):
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, name
