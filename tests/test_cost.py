"""Cost model: counts from hooks against hand counts, eq. 2 scores, ranking, config costs, the CLI."""

import json

import pytest

from lightning_mbu.cli import main
from lightning_mbu.config import LAYER_NAMES, LayerConfig
from lightning_mbu.config import parse_size
from lightning_mbu.search.cost import CostModel


@pytest.fixture(scope="module")
def small():
    return CostModel.measure((32, 32), base=4)


def test_counts_match_hand_computation(small):
    # down1: two 3x3 convs 4->8 and 8->8 on the 16x16 map after pooling (no bias)
    out = 8 * 16 * 16
    mults = out * 4 * 9 + out * 8 * 9
    adds = out * (4 * 9 - 1) + out * (8 * 9 - 1)
    assert small.layers["down1"].mults == mults
    assert small.layers["down1"].adds == adds
    assert small.layers["down1"].ops == mults + adds
    assert small.layers["down1"].params == 8 * 4 * 9 + 8 * 8 * 9
    # up_ct4: 2x2 stride-2 transposed conv 8->4, 16x16 -> 32x32: each output sums 8 products
    out = 4 * 32 * 32
    assert small.layers["up_ct4"].mults == out * 8
    assert small.layers["up_ct4"].adds == out * 7
    assert small.layers["up_ct4"].params == 8 * 4 * 2 * 2
    # up1: DoubleConv(64 -> 32) then (32 -> 32) at 4x4
    out = 32 * 4 * 4
    assert small.layers["up1"].mults == out * 64 * 9 + out * 32 * 9
    # the fixed parts: the float head has a bias, so one more add per output
    head = small.fixed["head"]
    assert head.adds == head.mults  # 1x1 conv 4->1: 4 products, 3 adds + 1 bias add per pixel
    assert set(small.layers) == set(LAYER_NAMES)


def test_sizes_are_padded_like_the_model(small):
    # MBUNet pads inputs to a multiple of 16, so 30x30 runs as 32x32
    assert CostModel.measure((30, 30), base=4).layers["down2"].ops == small.layers["down2"].ops


def test_binary_ops_follow_the_gemm_and_encodings(small):
    layer = small.layers["up_ct4"]
    m, n, k = 16 * 16, 4 * 2 * 2, 32  # 8 input channels pad to one 32-bit word
    assert layer.binary_ops("binary", "xor") == 2 * m * n * k
    assert layer.binary_ops("binary", "and") == 2 * m * (n + 1) * k  # the popc(a') column
    assert layer.binary_ops("masked", "xor") == layer.binary_ops("masked", "and") == 2 * m * 2 * n * k
    assert layer.binary_ops("int4") == 2 * layer.binary_ops("masked")  # four bit-serial planes
    with pytest.raises(ValueError, match="up_ct4"):
        layer.binary_ops("fp")
    with pytest.raises(ValueError, match="encoding"):
        layer.binary_ops("binary", "nand")
    masked, binary = small.config_binary_ops("M" * 12), small.config_binary_ops("B" * 12)
    assert masked - binary == sum(small.masking_cost().values())


def test_scores_and_ranking():
    model = CostModel.measure((640, 959), base=64)
    s = model.scores()
    assert all(0 <= v <= 1 for v in s.values())
    ops_only = model.ranking(w_op=1.0)
    assert set(ops_only[:4]) == {"up_ct1", "up_ct2", "up_ct3", "up_ct4"}  # 1-2 orders cheaper
    assert set(ops_only[-4:]) == {"up1", "up2", "up3", "up4"}
    params_only = model.ranking(w_op=0.0)
    params = [model.layers[n].params for n in params_only]
    assert params == sorted(params)
    # default weights: the paper's first four ranks are the transposed convs, deepest last
    assert model.ranking()[:4] == ["up_ct4", "up_ct3", "up_ct2", "up_ct1"]
    ranked = model.table()
    assert [r["score"] for r in ranked] == sorted(r["score"] for r in ranked)
    with pytest.raises(ValueError, match="w_op"):
        model.scores(w_op=1.5)


def test_cost_aware_configs_are_nested_and_costlier(small):
    configs = small.cost_aware_configs()
    assert len(configs) == 13
    order = small.ranking()
    for k, c in enumerate(configs):
        assert set(c.layers_with("masked")) == set(order[:k])
    costs = [small.config_binary_ops(c) for c in configs]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    assert configs[0] == LayerConfig.uniform("binary") and configs[-1] == LayerConfig.uniform("masked")


def test_parse_size():
    assert parse_size("640x959") == (640, 959)
    assert parse_size("512") == (512, 512)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("big")


def test_cost_cli(capsys, tmp_path):
    assert main(["cost", "--size", "64x64", "--base", "4", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in table["layers"]] == list(range(1, 13))
    assert main(["cost", "--size", "64x48", "--plot", str(tmp_path / "fig4.png")]) == 0
    assert "Up-CT4" in capsys.readouterr().out and (tmp_path / "fig4.png").stat().st_size > 0
    assert main(["cost", "--size", "huge"]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
