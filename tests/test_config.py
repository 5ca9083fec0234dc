import pytest

from lightning_mbu.config import LAYER_NAMES, LayerConfig, QuantSpec, parse_config, parse_size


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


@pytest.mark.parametrize("kwargs,message", [
    ({"stem": "ternary"}, "unknown mode 'ternary' for QuantSpec.stem"),
    ({"statistic": "median"}, "QuantSpec.statistic must be one of max, mean, got 'median'"),
    ({"t": -0.1}, r"QuantSpec.t must be a finite number >= 0, got -0.1"),
    ({"t": float("nan")}, "QuantSpec.t must be a finite number"),
    ({"config": "BBB"}, "has 3 letters"),
])
def test_quant_spec_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_quant_spec_forms_and_hparams_round_trip():
    spec = QuantSpec("up_ct1=M", stem="B", statistic="mean", t=0.7)
    assert spec.config == LayerConfig.masking(["up_ct1"]) and spec.stem == "binary" and spec.t == 0.7
    assert QuantSpec.coerce(spec.as_dict()) == spec and QuantSpec.coerce(spec) is spec
    assert QuantSpec.coerce("BBBBMMMMBBBB") == QuantSpec(LayerConfig.parse("BBBBMMMMBBBB"))
    assert not QuantSpec.coerce(None).is_quantized and not QuantSpec("fp").is_quantized
    with pytest.raises(Exception):  # frozen
        spec.t = 0.1
    # checkpoints written before QuantSpec kept flat keys
    old = {"config": "BBBBMMMMBBBB", "stem_mode": "binary", "masked_statistic": "mean", "masked_t": 0.3}
    assert QuantSpec.from_hparams(old) == QuantSpec("BBBBMMMMBBBB", stem="binary", statistic="mean", t=0.3)
    assert QuantSpec.from_hparams({"quant": spec.as_dict()}) == spec


@pytest.mark.parametrize("text", ["fp", "FP", "none", " None ", None])
def test_parse_config_full_precision_words(text):
    assert parse_config(text) is None


@pytest.mark.parametrize("value,size", [
    ("640x959", (640, 959)), ("640X959", (640, 959)), ("512", (512, 512)), (512, (512, 512)),
    (["640", "959"], (640, 959)), ([640, 959], (640, 959)), (["128"], (128, 128)), ("640 959", (640, 959)),
])
def test_parse_size_forms(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["big", "0x5", "1x2x3", [1, 2, 3], "-4"])
def test_parse_size_refuses(value):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH, HEIGHT WIDTH or N"):
        parse_size(value)
