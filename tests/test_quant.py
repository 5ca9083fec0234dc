import pytest
import torch

from lightning_mbu.quant import (
    BinaryWeight,
    KBitWeight,
    MaskedWeight,
    SignActivation,
    get_activation,
    get_weight_quantizer,
    sign_ste,
)


def test_sign_forward_maps_zero_to_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0])
    assert sign_ste(x).tolist() == [-1, 1, 1, 1, -1, 1]


def test_sign_ste_gradient_passes_inside_unit_interval_only():
    x = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 1.01], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    sign_ste(x).backward(g)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


def test_binary_weight_values_and_clipped_gradient():
    w = torch.tensor([[0.5, -0.2], [-1.2, 0.0]], requires_grad=True)
    q = BinaryWeight()(w)
    assert q.tolist() == [[1, -1], [-1, 1]]
    q.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_masked_weight_zeroes_below_per_channel_threshold():
    # two output channels; max statistic: thresholds 0.5*1.0 and 0.5*0.4
    w = torch.tensor([[1.0, -0.6, 0.5, -0.1], [0.4, -0.3, 0.19, 0.0]], requires_grad=True)
    q = MaskedWeight(t=0.5, statistic="max")(w)
    assert q.tolist() == [[1, -1, 0, 0], [1, -1, 0, 0]]
    q.sum().backward()  # straight-through: identity gradient inside |w| <= 1
    assert torch.equal(w.grad, torch.ones_like(w))


def test_masked_weight_mean_statistic_and_out_dim():
    w = torch.tensor([[[[2.0]], [[0.1]]], [[[-1.0]], [[0.3]]]])  # (in=2, out=2, 1, 1): transposed conv
    # out channel 0 holds {2, -1}: mean 1.5, threshold 1.05 -> [1, 0]; channel 1 holds {0.1, 0.3}: mean 0.2
    q = MaskedWeight(t=0.7, statistic="mean")(w, out_dim=1)
    assert q.flatten().tolist() == [1, 0, 0, 1]


def test_masked_sparsity_grows_with_t():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    fractions = [(MaskedWeight(t=t)(w) == 0).float().mean().item() for t in (0.0, 0.1, 0.3, 0.5, 0.8)]
    assert fractions[0] == 0.0
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[3] > 0.7  # uniform ternary rounding of gaussian weights: mostly zeros


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kbit_weight_levels(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 4, 3, 3)
    q = KBitWeight(bits)(w)
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / levels
    ints = q / scale
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert ints.abs().max() <= levels + 1e-4
    assert (q - w).abs().le(scale / 2 + 1e-6).all()


def test_lookup_by_name_and_object():
    assert isinstance(get_weight_quantizer("masked"), MaskedWeight)
    assert get_weight_quantizer("int4").bits == 4
    q = BinaryWeight()
    assert get_weight_quantizer(q) is q
    assert isinstance(get_activation("sign"), SignActivation)
    with pytest.raises(ValueError, match="valid: fp, binary, masked, int2, int4, int8"):
        get_weight_quantizer("int3")
    with pytest.raises(ValueError, match="statistic"):
        MaskedWeight(statistic="median")
