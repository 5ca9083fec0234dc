"""The runtime graph of a packed MBU-Net, shared by every backend (docs/format.md says it in words).

A ``PackedNet`` is a list of stages run in order; each stage writes one tensor named after it
and reads earlier ones by name (``"input"`` is the float image). Stage tensors are numpy
arrays: bit tensors are NHWC int32 words (channel ``c`` -> word ``c // 32``, bit ``c % 32``,
+1 -> 1), weight planes ``(P, Cout_pad, KH, KW, Cin_words)`` int32. A backend implements the
five stage kinds; ``raw_thresholds`` turns a layer's exact-accumulator threshold into the one
its XOR or AND popcount form compares against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cutlass_kernels.table import DEFAULT_ENCODING, ENCODINGS, check_encoding

from .bits import WORD_BITS, channel_mask, popcount, segment_positions, words
from .preprocess import PAD_MULTIPLE, input_spec, validate_input_spec

FORMAT_NAME = "lightning-mbu-packed"
#: 2: the input preprocessing and a checksum of every metadata field (format 1 files still load, with a warning)
FORMAT_VERSION = 2
#: bit-planes per weight mode: masked w = b+ - b- (planes 0, 1); binary b' = (w + 1) / 2
PLANES = {"binary": 1, "masked": 2}


def gemm_shape(positions: int, cin: int, cout: int, kernel: tuple[int, int], transposed: bool, planes: int = 1,
               window_count: bool = False) -> tuple[int, int, int]:
    """(M, N, K) of a binary layer's implicit GEMM over bits, the one geometry of the cost model and benchmarks.

    ``positions``: output pixels of a conv, input pixels of a transposed conv with stride == kernel (each
    emits a kh x kw patch, so its taps are columns). K is the input channels padded to whole words per
    tap; N is ``cout`` per weight plane, plus one column of ones when the AND form of a binary layer
    counts each window's +1 inputs (``window_count``, see ``raw_thresholds``).
    """
    kh, kw = kernel
    k = words(cin) * WORD_BITS
    if transposed:
        return positions, cout * kh * kw * planes + window_count, k
    return positions, cout * planes + window_count, k * kh * kw


def window_count_column(mode: str, encoding: str) -> bool:
    """Whether ``mode`` in ``encoding`` needs each window's popc(a' & m): the binary AND form only."""
    return mode == "binary" and check_encoding(encoding) == "and"


def _field(meta: dict, key: str, where: str):
    if key not in meta:
        raise ValueError(f"{where}: missing field {key!r}")
    return meta[key]


def _check_array(arr: Any, shape: tuple, dtype, where: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype) or arr.shape != tuple(shape):
        raise ValueError(
            f"{where}: expected {np.dtype(dtype).name} of shape {tuple(shape)}, got {arr.dtype.name} {arr.shape}"
        )


@dataclass
class Stage:
    """One step of a PackedNet. ``TENSORS`` lists the array fields stored as ``<name>.<field>``."""

    kind: ClassVar[str]
    META: ClassVar[tuple[str, ...]] = ()
    TENSORS: ClassVar[tuple[str, ...]] = ()

    name: str
    src: str

    def reads(self) -> tuple[str, ...]:
        return (self.src,)

    def out_segments(self, segs: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        return segs[self.src]

    def tensor_specs(self) -> dict[str, tuple[tuple, Any]]:
        return {}

    def meta(self) -> dict:
        out = {"kind": self.kind, "name": self.name, "src": self.src}
        for k in self.META:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in self.TENSORS}

    @classmethod
    def from_meta(cls, meta: dict, tensors: dict[str, np.ndarray]) -> Stage:
        where = f"stage {meta.get('name', '?')!r} ({cls.kind})"
        kwargs = {k: _field(meta, k, where) for k in ("name", "src", *cls.META)}
        for k, v in kwargs.items():
            if isinstance(v, list):
                kwargs[k] = tuple(v)
        kwargs.update({f: _field(tensors, f, f"{where}: tensor") for f in cls.TENSORS})
        return cls(**kwargs)

    def validate(self, segs: dict[str, tuple[int, ...]]) -> None:
        if "cin_segments" in self.META and tuple(self.cin_segments) != tuple(segs[self.src]):
            raise ValueError(f"stage {self.name!r}: cin_segments {list(self.cin_segments)} do not match "
                             f"its source {self.src!r}, which has {list(segs[self.src])}")
        for f, (shape, dtype) in self.tensor_specs().items():
            _check_array(getattr(self, f), shape, dtype, f"tensor {self.name}.{f}")


@dataclass
class FirstConv(Stage):
    """Float 3x3 conv on the image, folded batch-norm ``z * scale + shift``, sign, pack."""

    kind: ClassVar[str] = "first_conv"
    META: ClassVar[tuple[str, ...]] = ("cin", "cout", "pad_value")
    TENSORS: ClassVar[tuple[str, ...]] = ("weight", "scale", "shift")

    cin: int = 3
    cout: int = 64
    pad_value: float = 0.0
    weight: np.ndarray = field(default=None, repr=False)
    scale: np.ndarray = field(default=None, repr=False)
    shift: np.ndarray = field(default=None, repr=False)

    def out_segments(self, segs):
        return (self.cout,)

    def validate(self, segs):
        if not isinstance(self.pad_value, (int, float)) or isinstance(self.pad_value, bool) \
                or not np.isfinite(self.pad_value):
            raise ValueError(f"stage {self.name!r}: pad_value {self.pad_value!r} must be a finite number")
        super().validate(segs)

    def tensor_specs(self):
        return {"weight": ((self.cout, self.cin, 3, 3), np.float32),
                "scale": ((self.cout,), np.float32), "shift": ((self.cout,), np.float32)}


@dataclass
class MaxPool(Stage):
    """2x2 stride-2 max-pool on bits: OR of the four words."""

    kind: ClassVar[str] = "max_pool"


@dataclass
class ThresholdLayer(Stage):
    """A binary layer: bit-planes, and ``acc >= theta`` (direction +1) or ``acc <= theta`` (-1)."""

    META: ClassVar[tuple[str, ...]] = ("mode", "cin_segments", "cout")
    TENSORS: ClassVar[tuple[str, ...]] = ("planes", "theta", "direction")
    KERNEL: ClassVar[int]
    #: input pixels each output column sees (9 for a 3x3 conv, 1 for a 2x2 stride-2 transposed conv)
    TAPS: ClassVar[int]

    mode: str = "binary"
    cin_segments: tuple[int, ...] = ()
    cout: int = 0
    planes: np.ndarray = field(default=None, repr=False)
    theta: np.ndarray = field(default=None, repr=False)
    direction: np.ndarray = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Inputs per output column: the bound on |acc|."""
        return self.TAPS * sum(self.cin_segments)

    @property
    def cout_pad(self) -> int:
        return words(self.cout) * WORD_BITS

    @property
    def cin_words(self) -> int:
        return sum(words(c) for c in self.cin_segments)

    def gemm(self, pixels: int, encoding: str) -> tuple[int, int, int]:
        """(M, N, K) of this layer on ``pixels`` input positions (batch x height x width) in ``encoding``."""
        return gemm_shape(pixels, self.cin_words * WORD_BITS, self.cout_pad, (self.KERNEL, self.KERNEL),
                          transposed=self.TAPS == 1, planes=PLANES[self.mode],
                          window_count=window_count_column(self.mode, encoding))

    def tensor_specs(self):
        if self.mode not in PLANES:
            raise ValueError(f"stage {self.name!r}: weight mode {self.mode!r} has no bit-plane form "
                             f"(valid: {', '.join(PLANES)})")
        k = self.KERNEL
        return {"planes": ((PLANES[self.mode], self.cout_pad, k, k, self.cin_words), np.int32),
                "theta": ((self.cout_pad,), np.int32), "direction": ((self.cout_pad,), np.int8)}

    def validate(self, segs):
        super().validate(segs)
        if not np.isin(self.direction, (-1, 1)).all():
            raise ValueError(f"tensor {self.name}.direction: values must be +1 or -1")
        pad_rows = slice(self.cout, None)
        if (self.planes[:, pad_rows] != 0).any() or (self.direction[pad_rows] != 1).any() \
                or (self.theta[pad_rows] != self.n + 1).any():
            raise ValueError(f"stage {self.name!r}: padding output channels {self.cout}..{self.cout_pad - 1} "
                             "must have zero weights and be always-off (theta = n + 1, direction +1)")
        outside = ~channel_mask(self.cin_segments)
        if (self.planes & outside).any():
            raise ValueError(f"tensor {self.name}.planes: bits set at padding input channels")
        if self.mode == "masked" and (self.planes[0] & self.planes[1]).any():
            raise ValueError(f"tensor {self.name}.planes: a weight is both +1 and -1 (b+ and b- overlap)")

    def column_popcount(self, plane: int) -> np.ndarray:
        """Set bits per GEMM column: (Cout_pad,) for a conv, (Cout_pad, 2, 2) for a transposed conv."""
        p = self.planes[plane]
        return popcount(p, axis=(1, 2, 3)) if self.TAPS > 1 else popcount(p, axis=-1)


@dataclass
class BinaryConv(ThresholdLayer):
    """3x3 stride-1 conv, input padded with bit 0 (-1), output thresholded and packed."""

    kind: ClassVar[str] = "binary_conv"
    KERNEL: ClassVar[int] = 3
    TAPS: ClassVar[int] = 9

    def out_segments(self, segs):
        return (self.cout,)


@dataclass
class TConvConcat(ThresholdLayer):
    """2x2 stride-2 transposed conv, thresholded, written after ``skip``: cat([skip, up]) in words."""

    kind: ClassVar[str] = "tconv_concat"
    META: ClassVar[tuple[str, ...]] = ("skip", *ThresholdLayer.META)
    KERNEL: ClassVar[int] = 2
    TAPS: ClassVar[int] = 1

    skip: str = ""

    def reads(self):
        return (self.src, self.skip)

    def out_segments(self, segs):
        return (*segs[self.skip], self.cout)


@dataclass
class FinalConv(Stage):
    """1x1 conv from bits to float logits: ``bias + weight @ (2 a' - 1)`` (zero weights at padding)."""

    kind: ClassVar[str] = "final_conv"
    META: ClassVar[tuple[str, ...]] = ("cin_segments", "num_classes")
    TENSORS: ClassVar[tuple[str, ...]] = ("weight", "bias")

    cin_segments: tuple[int, ...] = ()
    num_classes: int = 1
    weight: np.ndarray = field(default=None, repr=False)
    bias: np.ndarray = field(default=None, repr=False)

    def out_segments(self, segs):
        return ()

    def tensor_specs(self):
        cin = sum(words(c) for c in self.cin_segments) * WORD_BITS
        return {"weight": ((self.num_classes, cin), np.float32), "bias": ((self.num_classes,), np.float32)}

    def validate(self, segs):
        super().validate(segs)
        keep = np.zeros(self.weight.shape[1], dtype=bool)
        keep[segment_positions(self.cin_segments)] = True
        if (self.weight[:, ~keep] != 0).any():
            raise ValueError(f"tensor {self.name}.weight: non-zero weights at padding channels")


STAGE_KINDS: dict[str, type[Stage]] = {
    cls.kind: cls for cls in (FirstConv, BinaryConv, MaxPool, TConvConcat, FinalConv)
}


def raw_thresholds(stage: ThresholdLayer, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """``(thr, d)`` such that the layer's bit is ``d * r >= d * thr`` for the raw count ``r`` of ``encoding``.

    Raw counts (popc summed over the window): masked xor ``popc(a'^b-) - popc(a'^b+)``; masked and
    ``popc(a'&b+) - popc(a'&b-)``; binary xor ``popc(a'^b')``; binary and ``2 popc(a'&b') - popc(a'&m)``.
    Shapes: (Cout_pad,) for a conv, (Cout_pad, 2, 2) for a transposed conv.
    """
    check_encoding(encoding)
    cols = stage.column_popcount(0)
    expand = (slice(None),) + (None,) * (cols.ndim - 1)
    theta = np.broadcast_to(stage.theta.astype(np.int64)[expand], cols.shape)
    d = np.broadcast_to(stage.direction.astype(np.int64)[expand], cols.shape)
    n = stage.n
    if encoding == "xor" and stage.mode == "masked":  # acc = r
        thr, d_raw = theta, d
    elif encoding == "xor":  # acc = n - 2r: the comparison flips
        t = n - theta
        thr, d_raw = np.where(d > 0, t // 2, -(-t // 2)), -d
    else:  # acc = 2r - c
        c = cols - stage.column_popcount(1) if stage.mode == "masked" else 2 * cols - n
        t = theta + c
        thr, d_raw = np.where(d > 0, -(-t // 2), t // 2), d
    return thr.astype(np.int32), d_raw.astype(np.int8)


@dataclass
class PackedNet:
    """Stages plus what a backend needs around them: model facts and the input-size policy."""

    stages: list[Stage]
    model: dict = field(default_factory=dict)
    #: the preprocessing every backend applies (ops/preprocess.py): none until the exporter stores training's
    input: dict = field(default_factory=lambda: input_spec(3, "none", PAD_MULTIPLE))
    default_encoding: str = DEFAULT_ENCODING

    def segments(self) -> dict[str, tuple[int, ...]]:
        """Channel segments of every stage's output; checks that each stage reads earlier ones."""
        segs: dict[str, tuple[int, ...]] = {}
        for i, st in enumerate(self.stages):
            if (i == 0) != isinstance(st, FirstConv) or (i == len(self.stages) - 1) != isinstance(st, FinalConv):
                raise ValueError(f"stage {st.name!r} ({st.kind}) at position {i}: a PackedNet starts with one "
                                 "first_conv and ends with one final_conv")
            for r in st.reads():
                if r not in segs and not (i == 0 and r == "input"):
                    raise ValueError(f"stage {st.name!r} reads {r!r}, which no earlier stage writes")
            if st.name in segs or st.name == "input":
                raise ValueError(f"stage name {st.name!r} is used twice")
            segs[st.name] = tuple(st.out_segments(segs))
        return segs

    def validate(self) -> None:
        if not self.stages:
            raise ValueError("a PackedNet needs stages")
        check_encoding(self.default_encoding, "default_encoding")
        segs = self.segments()
        for st in self.stages:
            st.validate(segs)
        pools = sum(isinstance(s, MaxPool) for s in self.stages)
        first, final = self.stages[0], self.stages[-1]
        validate_input_spec(self.input, first.cin, pools)
        if first.cin != self.model.get("in_channels", first.cin) \
                or final.num_classes != self.model.get("num_classes", final.num_classes):
            raise ValueError("model in_channels/num_classes do not match the first and final stages")
        self._check_model()

    def _check_model(self) -> None:
        """The model facts must describe these stages: base (first width), stem_mode and config (layer modes)."""
        first, base = self.stages[0], self.model.get("base")
        if base is not None and base != first.cout:
            raise ValueError(f"model base {base!r} does not match the tensors: stage {first.name} has "
                             f"{first.cout} output channels")
        modes: dict[str, set[str]] = {}  # MBUNet layer (stage name up to the first dot) -> its stages' modes
        for s in self.threshold_layers:
            modes.setdefault(s.name.split(".")[0], set()).add(s.mode)
        stem = self.model.get("stem_mode")
        if stem is not None and "inc" in modes and modes["inc"] != {stem}:
            raise ValueError(f"model stem_mode {stem!r} does not match the tensors: inc.conv2 is "
                             f"{'/'.join(sorted(modes['inc']))}")
        config = self.model.get("config")
        if config is not None:
            from ..config import LayerConfig

            try:
                wanted = dict(LayerConfig.parse(config).items())
            except (TypeError, ValueError) as e:
                raise ValueError(f"model config {config!r}: {e}") from None
            for layer, mode in wanted.items():
                found = modes.get(layer, set())
                if found != {mode}:
                    raise ValueError(f"model config {config!r} does not match the tensors: {layer} is "
                                     f"{'/'.join(sorted(found)) or 'absent'} in the file's stages, not {mode}")

    @property
    def threshold_layers(self) -> list[ThresholdLayer]:
        return [s for s in self.stages if isinstance(s, ThresholdLayer)]

    def meta(self) -> dict:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "model": dict(self.model),
            "bits": {"word_bits": WORD_BITS, "bit_order": "lsb_first", "one_is": "+1", "spatial_pad_bit": 0},
            "encodings": list(ENCODINGS), "default_encoding": self.default_encoding,
            "input": dict(self.input), "stages": [s.meta() for s in self.stages],
        }

    def tensors(self) -> dict[str, np.ndarray]:
        return {f"{s.name}.{f}": a for s in self.stages for f, a in s.tensors().items()}

    @classmethod
    def from_meta(cls, meta: dict, tensors: dict[str, np.ndarray]) -> PackedNet:
        stages = []
        for i, sm in enumerate(_field(meta, "stages", "metadata")):
            kind = _field(sm, "kind", f"stage {i}")
            if kind not in STAGE_KINDS:
                raise ValueError(f"stage {i} ({sm.get('name', '?')!r}): unknown kind {kind!r}; "
                                 f"valid: {', '.join(STAGE_KINDS)}")
            prefix = f"{_field(sm, 'name', f'stage {i}')}."
            own = {k[len(prefix):]: v for k, v in tensors.items()
                   if k.startswith(prefix) and "." not in k[len(prefix):]}
            stages.append(STAGE_KINDS[kind].from_meta(sm, own))
        net = cls(stages, model=_field(meta, "model", "metadata"), input=_field(meta, "input", "metadata"),
                  default_encoding=_field(meta, "default_encoding", "metadata"))
        expected = set(net.tensors())
        extra = sorted(set(tensors) - expected)
        if extra:
            raise ValueError(f"tensors {extra} belong to no stage")
        return net
