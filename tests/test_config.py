import pytest

from lightning_mbu.config import LAYER_NAMES, LayerConfig


def test_string_round_trip_and_order():
    c = LayerConfig.parse("BBBBMMMMBBBB")
    assert str(c) == "BBBBMMMMBBBB"
    assert c.layers_with("masked") == ["up_ct1", "up_ct2", "up_ct3", "up_ct4"]
    assert c["down1"] == "binary" and c["up_ct3"] == "masked"
    mixed = LayerConfig.parse("M2B48FBBBBBm")
    assert mixed.modes[:6] == ("masked", "int2", "binary", "int4", "int8", "fp")
    assert str(mixed) == "M2B48FBBBBBM"


def test_named_and_dict_forms_agree():
    a = LayerConfig.parse("up_ct1=masked, up_ct2=M ,down3=int8")
    b = LayerConfig.parse({"up_ct1": "M", "up_ct2": "masked", "down3": "8"})
    assert a == b
    assert str(a) == "BB8BMMBBBBBB"
    assert LayerConfig.parse(a) is a
    assert LayerConfig.masking(["up4", "down1"]) == LayerConfig.parse("MBBBBBBBBBBM")
    assert LayerConfig.parse(str(a).lower()) == a


def test_uniform_and_as_dict():
    assert str(LayerConfig.uniform("masked")) == "M" * 12
    assert list(LayerConfig.uniform("binary").as_dict()) == list(LAYER_NAMES)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("BBBBMMMMBBB", "has 11 letters; it needs 12"),
        ("BBBBMMMMBBBX", "unknown mode 'X' for layer up4"),
        ("up_ct9=masked", "unknown layer 'up_ct9'; valid layers: down1, down2"),
        ("down1=ternary", "valid modes: binary \\(B\\), masked \\(M\\)"),
        ("down1", "has 5 letters"),
        ("down1=M,up1", "is not name=mode"),
    ],
)
def test_errors_list_valid_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        LayerConfig.parse(spec)


def test_wrong_type():
    with pytest.raises(TypeError):
        LayerConfig.parse(12)
