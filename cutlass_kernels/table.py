"""The kernel table (kernels.json): which binary conv instances exist and which one each layer uses.

A kernel is data: encoding (``and``/``xor`` popcount), the compute capabilities it runs on, the
threadblock tile, warps per tile, pipeline stages, CUTLASS's activation iterator and the
channel alignment in bits. ``choices`` holds, per arch, the kernel measured fastest for a layer
shape; shapes without a measurement fall back to the first kernel in table order that accepts
the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("kernels.json")
#: the dot-product forms of a binary layer (docs/format.md section 4); the order is the `.mbu` file's
#: ``encodings`` list, so it is part of the format
ENCODINGS = ("xor", "and")
#: AND-popcount: native on every arch with b1 mma.sync kernels (sm_80+); XOR has no native mma on Hopper
DEFAULT_ENCODING = "and"
ITERATORS = ("analytic", "optimized", "few_channels", "fixed_channels")


def check_encoding(encoding: str, what: str = "encoding") -> str:
    """``encoding`` if it is one of ENCODINGS, else a ValueError naming ``what`` (an argument, a file field)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"{what}: unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    return encoding


@dataclass(frozen=True)
class KernelSpec:
    encoding: str
    cc: tuple[int, int]  # lowest and highest compute capability (major * 10 + minor)
    tile: tuple[int, int, int]  # threadblock M (pixels), N (columns), K (bits)
    warps: tuple[int, int, int]
    stages: int
    iterator: str
    alignment: int  # bits; the input channel count must be a multiple

    def __post_init__(self):
        check_encoding(self.encoding, "kernels.json")
        if self.iterator not in ITERATORS:
            raise ValueError(f"kernels.json: iterator {self.iterator!r} is not one of {ITERATORS}")
        m, n, k = self.tile
        if n % 64 or m % 32 or k % 512:
            raise ValueError(f"kernels.json: tile {self.tile} needs N % 64 == 0, M % 32 == 0 and K % 512 == 0")
        if self.warps[2] != 1:
            raise ValueError(f"kernels.json: tile {self.tile} splits K across warps, which the epilogue does not support")
        if self.alignment not in (32, 64, 128):
            raise ValueError(f"kernels.json: alignment {self.alignment} is not 32, 64 or 128 bits")

    @property
    def name(self) -> str:
        m, n, k = self.tile
        wm, wn, _ = self.warps
        return f"{self.encoding}_{m}x{n}x{k}_w{wm}x{wn}_s{self.stages}_{self.iterator}_a{self.alignment}"

    def runs_on(self, cc: int) -> bool:
        return self.cc[0] <= cc <= self.cc[1]

    @classmethod
    def from_dict(cls, d: dict) -> KernelSpec:
        return cls(d["encoding"], tuple(d["cc"]), tuple(d["tile"]), tuple(d["warps"]), int(d["stages"]),
                   d["iterator"], int(d["alignment"]))


@dataclass(frozen=True)
class KernelTable:
    kernels: tuple[KernelSpec, ...]
    choices: dict  # {"sm90": {layer_key: kernel name}}

    @classmethod
    def load(cls, path: str | Path = TABLE_PATH) -> KernelTable:
        raw = json.loads(Path(path).read_text())
        kernels = tuple(KernelSpec.from_dict(d) for d in raw["kernels"])
        names = [k.name for k in kernels]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate kernels in the table")
        return cls(kernels, raw.get("choices", {}))

    def for_arch(self, cc: int, encoding: str | None = None) -> list[KernelSpec]:
        return [k for k in self.kernels if k.runs_on(cc) and (encoding is None or k.encoding == encoding)]

    def encodings(self, cc: int) -> tuple[str, ...]:
        """The encodings that have a kernel on ``cc``, in ENCODINGS order (XOR: none on Hopper)."""
        return tuple(e for e in ENCODINGS if self.for_arch(cc, e))

    def by_name(self, name: str) -> KernelSpec:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(f"kernel {name!r} is not in the table")

    def choice(self, cc: int, key: str) -> str | None:
        return self.choices.get(f"sm{cc}", {}).get(key)


def layer_key(encoding: str, r: int, c_bits: int, k_cols: int, h: int, w: int) -> str:
    """The lookup key of a conv shape: ``and_r3_c512_k1024_80x120`` (k_cols counts both planes)."""
    return f"{encoding}_r{r}_c{c_bits}_k{k_cols}_{h}x{w}"


def save_choices(choices: dict, path: str | Path = TABLE_PATH) -> None:
    """Merge measured ``{"smXX": {key: name}}`` into the table file (``python -m lightning_mbu.bench.kernels --save-choices``)."""
    path = Path(path)
    raw = json.loads(path.read_text())
    for arch, table in choices.items():
        raw.setdefault("choices", {}).setdefault(arch, {}).update(table)
    path.write_text(dump_table(raw))


def dump_table(raw: dict) -> str:
    """kernels.json text: one kernel and one choice per line, so that diffs stay readable."""
    kernels = ",\n".join("  " + json.dumps(k) for k in raw["kernels"])
    arches = []
    for arch, table in sorted(raw.get("choices", {}).items()):
        rows = ",\n".join(f"   {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table.items()))
        arches.append(f"  {json.dumps(arch)}: {{\n{rows}\n  }}")
    choices = "{\n" + ",\n".join(arches) + "\n }" if arches else "{}"
    return (f'{{\n "about": {json.dumps(raw["about"])},\n "kernels": [\n{kernels}\n ],\n'
            f' "choices": {choices}\n}}\n')
