"""LayerConfig: the weight mode of each of the 12 configurable U-Net layers.

Forms accepted everywhere (search, export, bench, CLI):
- a 12-letter string in the fixed order of ``LAYER_NAMES`` (``BBBBMMMMBBBB``),
- ``name=mode,...`` (unnamed layers default to binary): ``up_ct1=masked,up_ct2=M``,
- a dict ``{name: mode}``, or another LayerConfig.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
