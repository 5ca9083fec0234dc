"""LayerConfig: the weight mode of each of the 12 configurable U-Net layers.

Forms accepted everywhere (search, export, bench, CLI):
- a 12-letter string in the fixed order of ``LAYER_NAMES`` (``BBBBMMMMBBBB``),
- ``name=mode,...`` (unnamed layers default to binary): ``up_ct1=masked,up_ct2=M``,
- a dict ``{name: mode}``, or another LayerConfig.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

LAYER_NAMES: tuple[str, ...] = (
    "down1", "down2", "down3", "down4",
    "up_ct1", "up_ct2", "up_ct3", "up_ct4",
    "up1", "up2", "up3", "up4",
)
#: The paper's names for the same layers (Down-C1..4, Up-CT1..4, Up-C1..4).
PAPER_NAMES = dict(zip(LAYER_NAMES, [
    "Down-C1", "Down-C2", "Down-C3", "Down-C4",
    "Up-CT1", "Up-CT2", "Up-CT3", "Up-CT4",
    "Up-C1", "Up-C2", "Up-C3", "Up-C4",
]))
LETTER_TO_MODE = {"B": "binary", "M": "masked", "2": "int2", "4": "int4", "8": "int8", "F": "fp"}
MODE_TO_LETTER = {m: k for k, m in LETTER_TO_MODE.items()}
MODES = tuple(LETTER_TO_MODE.values())


def _mode(value: str, where: str) -> str:
    v = str(value).strip()
    if v in MODES:
        return v
    if v.upper() in LETTER_TO_MODE:
        return LETTER_TO_MODE[v.upper()]
    raise ValueError(
        f"unknown mode {value!r} for {where}; valid modes: "
        + ", ".join(f"{m} ({MODE_TO_LETTER[m]})" for m in MODES)
    )


def _layer(name: str) -> str:
    n = name.strip()
    if n not in LAYER_NAMES:
        raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(LAYER_NAMES)}")
    return n


@dataclass(frozen=True)
class LayerConfig:
    modes: tuple[str, ...]

    def __post_init__(self):
        if len(self.modes) != len(LAYER_NAMES):
            raise ValueError(f"a LayerConfig has {len(LAYER_NAMES)} modes, got {len(self.modes)}")
        for name, m in zip(LAYER_NAMES, self.modes):
            _mode(m, name)

    @classmethod
    def parse(cls, spec: str | Mapping[str, str] | LayerConfig) -> LayerConfig:
        if isinstance(spec, LayerConfig):
            return spec
        if isinstance(spec, Mapping):
            return cls._from_mapping(spec)
        if not isinstance(spec, str):
            raise TypeError(f"a layer config is a string, dict or LayerConfig, not {type(spec).__name__}")
        s = spec.strip()
        if "=" in s:
            pairs = {}
            for item in filter(None, (p.strip() for p in s.split(","))):
                if "=" not in item:
                    raise ValueError(f"layer config item {item!r} is not name=mode")
                k, v = item.split("=", 1)
                pairs[k] = v
            return cls._from_mapping(pairs)
        if len(s) != len(LAYER_NAMES):
            raise ValueError(
                f"layer config {spec!r} has {len(s)} letters; it needs {len(LAYER_NAMES)}, one per layer in "
                f"the order {', '.join(LAYER_NAMES)}, each one of {''.join(LETTER_TO_MODE)}"
            )
        return cls(tuple(_mode(c, f"layer {n} (letter {i + 1})") for i, (c, n) in enumerate(zip(s, LAYER_NAMES))))

    @classmethod
    def _from_mapping(cls, mapping: Mapping[str, str]) -> LayerConfig:
        modes = dict.fromkeys(LAYER_NAMES, "binary")
        for k, v in mapping.items():
            modes[_layer(k)] = _mode(v, k)
        return cls(tuple(modes[n] for n in LAYER_NAMES))

    @classmethod
    def uniform(cls, mode: str) -> LayerConfig:
        return cls((_mode(mode, "all layers"),) * len(LAYER_NAMES))

    @classmethod
    def masking(cls, layers) -> LayerConfig:
        """Binary everywhere except the named layers, which are masked."""
        return cls._from_mapping({_layer(n): "masked" for n in layers})

    def __str__(self) -> str:
        return "".join(MODE_TO_LETTER[m] for m in self.modes)

    def __getitem__(self, name: str) -> str:
        return self.modes[LAYER_NAMES.index(_layer(name))]

    def items(self):
        return zip(LAYER_NAMES, self.modes)

    def as_dict(self) -> dict[str, str]:
        return dict(self.items())

    def layers_with(self, mode: str) -> list[str]:
        return [n for n, m in self.items() if m == mode]


#: Words that mean "no layer config: a full-precision net" on the command line and in hyper-parameters.
FULL_PRECISION_WORDS = ("fp", "none")


def parse_config(text: str | Mapping[str, str] | LayerConfig | None) -> LayerConfig | None:
    """A LayerConfig, or None for ``None``, ``'fp'`` or ``'none'`` (any case): the one parser for CLI strings."""
    if text is None or (isinstance(text, str) and text.strip().lower() in FULL_PRECISION_WORDS):
        return None
    return LayerConfig.parse(text)


#: Statistics of |w| per output channel that the masking threshold scales (see ``quant.MaskedWeight``).
STATISTICS = ("max", "mean")
#: The masking factor t: with the "max" statistic, 0.5 rounds w / max|w| to the nearest of -1, 0, +1.
DEFAULT_T = 0.5
#: Hyper-parameter names older checkpoints used for the QuantSpec fields.
LEGACY_KEYS = {"stem_mode": "stem", "masked_statistic": "statistic", "masked_t": "t"}


@dataclass(frozen=True)
class QuantSpec:
    """How an MBUNet is quantized: one value that MBUNet, SegmentationModule and MBUCallback all take.

    Args:
        config: the 12 layer modes (any form ``parse_config`` takes); None for a full-precision net.
        stem: mode of the second input conv (In-C2), masked in the paper.
        statistic: per-channel statistic of |w| the masking threshold scales: "max" or "mean".
        t: the masking factor (MBUCallback's schedule ends at it).
    """

    config: LayerConfig | None = None
    stem: str = "masked"
    statistic: str = "max"
    t: float = DEFAULT_T

    def __post_init__(self):
        object.__setattr__(self, "config", parse_config(self.config))
        object.__setattr__(self, "stem", _mode(self.stem, "QuantSpec.stem"))
        if self.statistic not in STATISTICS:
            raise ValueError(f"QuantSpec.statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) or not math.isfinite(self.t) \
                or self.t < 0:
            raise ValueError(f"QuantSpec.t must be a finite number >= 0, got {self.t!r}")
        object.__setattr__(self, "t", float(self.t))

    @property
    def is_quantized(self) -> bool:
        return self.config is not None

    @classmethod
    def coerce(cls, value: QuantSpec | str | Mapping | LayerConfig | None) -> QuantSpec:
        """A QuantSpec from itself, its ``as_dict()`` form, or a layer config alone (other fields default)."""
        if isinstance(value, QuantSpec):
            return value
        if isinstance(value, Mapping) and value and set(value) <= set(cls.field_names()):
            return cls(**value)
        return cls(config=value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        """Plain values (the config as its 12 letters) for hyper-parameters and JSON: checkpoints stay plain."""
        return {**asdict(self), "config": None if self.config is None else str(self.config)}

    @classmethod
    def from_hparams(cls, hparams: Mapping) -> QuantSpec:
        """The spec a checkpoint's hyper-parameters record: ``quant`` (a dict), or the flat keys of older ones."""
        if hparams.get("quant") is not None:
            return cls.coerce(hparams["quant"])
        old = {new: hparams[key] for key, new in LEGACY_KEYS.items() if key in hparams}
        return cls(config=hparams.get("config"), **old)


def parse_size(value: str | int | Iterable) -> tuple[int, int]:
    """(height, width) from ``'HxW'``, ``'H W'``, ``'N'`` (a square), an int, or one or two numbers/strings.

    The one size parser of the CLI: ``--size 640x959``, ``--size 640 959`` and ``--size 512`` all work.
    """
    items = [value] if isinstance(value, (str, int)) else list(value)
    parts: list[str] = []
    for item in items:
        parts += str(item).lower().replace("x", " ").replace(",", " ").split()
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {value!r} is not HEIGHTxWIDTH, HEIGHT WIDTH or N (e.g. 640x959, 640 959, 512)") \
            from None
    if len(size) == 1:
        size *= 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size {value!r} is not HEIGHTxWIDTH, HEIGHT WIDTH or N: it needs two positive "
                         "integers (one for a square)")
    return size
