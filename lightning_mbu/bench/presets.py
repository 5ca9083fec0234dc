"""The paper's inference settings (Table A.2, H100 row; input sizes from Table A.3).

Batch sizes differ per precision: the paper maximised the FP32 and FP16 batches
before the GPU ran out of memory, and ran the packed nets at the FP16 batch.
``--size`` and ``--batch`` override a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import parse_size

#: Model kinds a preset gives a batch size for; packed covers binary and every MBU-Net config.
KINDS = ("fp32", "fp16", "packed")


@dataclass(frozen=True)
class Workload:
    name: str
    height: int
    width: int
    batches: dict[str, int] = field(default_factory=dict)

    def batch(self, kind: str) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
        return self.batches[kind]

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


PRESETS: dict[str, Workload] = {
    "carvana": Workload("carvana", 640, 959, {"fp32": 64, "fp16": 64, "packed": 64}),
    "isic": Workload("isic", 480, 640, {"fp32": 128, "fp16": 256, "packed": 256}),
    "nuclei": Workload("nuclei", 512, 512, {"fp32": 128, "fp16": 256, "packed": 256}),
}


def resolve(preset: str | None = "carvana", size: str | None = None, batch: int | None = None) -> Workload:
    """The workload of ``preset`` with ``size`` ('HxW') and ``batch`` (all kinds) overriding it."""
    if preset is None:
        if size is None:
            raise ValueError("give --preset or --size")
        work = Workload("custom", 0, 0, dict.fromkeys(KINDS, 1))
    elif preset.lower() not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    else:
        work = PRESETS[preset.lower()]
    if size is not None:
        h, w = parse_size(size)
        if (h, w) != work.size:
            work = replace(work, name=f"{h}x{w}", height=h, width=w)
    if batch is not None:
        if batch < 1:
            raise ValueError(f"--batch must be a positive integer, got {batch}")
        work = replace(work, batches=dict.fromkeys(KINDS, batch))
    return work
