"""The CUDA backend: a PackedNet on binary tensor cores (``load_packed(path, backend="cuda")``).

Binary layers run as CUTLASS implicit-GEMM convs whose epilogue thresholds and packs the output bits
(cutlass_kernels); max-pool, first and final layers are small hand-written kernels. With
``hand_written=True`` and the AND encoding, the issue-13 kernels run instead: the 3x3 convs as the
K-packed kernel (bconv_taps.cu), the transposed convs as one b1 GEMM (tconv.cu), the first conv on FP16
tensor cores, a vector max-pool (opt-in until their GPU tests have passed on hardware). Every stage writes its bits where the next one
reads them: a skip tensor is written straight into the first words of its concatenation buffer and
the transposed conv scatters into the rest, so concatenation copies nothing. The dot-product form is
the file's ``default_encoding`` (or the one asked for) when the kernel table has kernels of it for
this GPU; XOR has none on Hopper (no native XOR mma; CUTLASS compiles it to an assert stub), so a
file asking for it falls back to AND there, with a warning. Which CUTLASS tile each layer uses comes
from the kernel table (cutlass_kernels/kernels.json) keyed by layer shape, or the first kernel that
accepts the problem.

``forward`` captures one CUDA graph per input shape (``graphs=False`` runs stage by stage).
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cutlass_kernels.build import device_cc, load_library
from cutlass_kernels.table import DEFAULT_ENCODING, KernelSpec, KernelTable, check_encoding, layer_key

from .bits import WORD_BITS, words
from .graph import BinaryConv, FinalConv, FirstConv, MaxPool, PackedNet, Stage, TConvConcat, raw_thresholds
from .preprocess import prepare

_ERRORS = {1001: "CUTLASS cannot implement this problem (channel alignment?)", 1002: "bad argument"}


class ConvArgs(ctypes.Structure):
    """Mirror of ``MbuConvArgs`` in cutlass_kernels/src/mbu_api.h (same field order)."""

    _fields_ = [
        ("n", ctypes.c_int), ("h", ctypes.c_int), ("w", ctypes.c_int), ("c_bits", ctypes.c_int),
        ("k_cols", ctypes.c_int), ("r", ctypes.c_int), ("s", ctypes.c_int), ("pad", ctypes.c_int),
        ("planes", ctypes.c_int), ("alpha", ctypes.c_int), ("row_count", ctypes.c_void_p),
        ("act", ctypes.c_void_p), ("filt", ctypes.c_void_p), ("thr", ctypes.c_void_p), ("out", ctypes.c_void_p),
        ("out_pixel_stride", ctypes.c_int64), ("out_word_offset", ctypes.c_int), ("out_words", ctypes.c_int),
        ("scatter", ctypes.c_int),
    ]


def _check(code: int, what: str) -> None:
    if code:
        raise RuntimeError(f"{what}: CUDA kernel failed with code {code} ({_ERRORS.get(code, 'a cudaError_t')})")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def check_runs(encoding: str, cc: int, table: KernelTable | None = None) -> None:
    """Raise unless the kernel table has kernels of ``encoding`` for sm_``cc``."""
    check_encoding(encoding)
    runs = (table or KernelTable.load()).encodings(cc)
    if encoding not in runs:
        raise ValueError(f"encoding {encoding!r} has no kernel on sm_{cc} in the kernel table (b1 XOR mma is not "
                         f"native on Hopper, and CUTLASS builds it as an assert stub); use {' or '.join(runs)!s}")


def choose_encoding(asked: str | None, file_default: str, cc: int, table: KernelTable | None = None) -> str:
    """The encoding to run: ``asked`` (which must run on sm_``cc``), else the file's default when it runs here,
    else DEFAULT_ENCODING with a warning."""
    table = table or KernelTable.load()
    if asked is not None:
        check_runs(asked, cc, table)
        return asked
    check_encoding(file_default, "default_encoding")
    if file_default in table.encodings(cc):
        return file_default
    warnings.warn(f"the model's default encoding {file_default!r} has no kernel on sm_{cc}; running "
                  f"{DEFAULT_ENCODING!r} (the same logits, another dot-product form)", UserWarning, stacklevel=3)
    return DEFAULT_ENCODING


class Library:
    """The ctypes view of the kernel library for one compute capability."""

    def __init__(self, cc: int):
        self.cc = cc
        self.lib, self.specs = load_library(cc)
        self.table = KernelTable.load()
        for name in ("mbu_threshold_pack", "mbu_max_pool", "mbu_max_pool_vec", "mbu_window_count", "mbu_first_conv",
                     "mbu_first_conv_tc", "mbu_final_conv", "mbu_tconv", "mbu_bconv_taps", "mbu_bconv_taps_counted"):
            getattr(self.lib, name).restype = ctypes.c_int
        self.lib.mbu_max_pool.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_window_count.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 5, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_first_conv.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 4, ctypes.c_float, *[ctypes.c_void_p] * 3,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_final_conv.argtypes = [ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_int] * 4, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_threshold_pack.argtypes = [ctypes.POINTER(ConvArgs), ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_max_pool_vec.argtypes = self.lib.mbu_max_pool.argtypes
        self.lib.mbu_first_conv_tc.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 5, ctypes.c_float,
                                               *[ctypes.c_void_p] * 3, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.mbu_tconv.argtypes = [ctypes.POINTER(ConvArgs), ctypes.c_void_p]
        self.lib.mbu_bconv_taps.argtypes = self.lib.mbu_bconv_taps_counted.argtypes = self.lib.mbu_tconv.argtypes

    def conv_fn(self, spec: KernelSpec, suffix: str = ""):
        """``mbu_bconv_<name><suffix>``: suffix "" (fused), "_int32" (CUTLASS epilogue) or "_check"."""
        fn = getattr(self.lib, f"mbu_bconv_{spec.name}{suffix}")
        fn.restype = ctypes.c_int
        fn.argtypes = {"": [ctypes.POINTER(ConvArgs), ctypes.c_void_p], "_check": [ctypes.POINTER(ConvArgs)],
                       "_int32": [ctypes.POINTER(ConvArgs), ctypes.c_void_p, ctypes.c_void_p]}[suffix]
        return fn

    def accepts(self, spec: KernelSpec, args: ConvArgs) -> bool:
        return self.conv_fn(spec, "_check")(ctypes.byref(args)) == 0

    def candidates(self, encoding: str, args: ConvArgs) -> list[KernelSpec]:
        """Kernels of ``encoding`` that accept ``args``, in table order."""
        return [s for s in self.specs if s.encoding == encoding and self.accepts(s, args)]

    def choose(self, encoding: str, args: ConvArgs, key: str) -> KernelSpec:
        name = self.table.choice(self.cc, key)
        fitting = self.candidates(encoding, args)
        if not fitting:
            raise RuntimeError(f"no {encoding} kernel on sm_{self.cc} accepts the layer shape {key}")
        return next((s for s in fitting if s.name == name), fitting[0])


@dataclass(frozen=True)
class HandWrittenKernel:
    """A kernel outside the CUTLASS table, named by its C entry point (a plan's ``choices`` entry)."""

    name: str


#: the transposed conv as one b1 GEMM with a scattering epilogue (AND encoding, sm_80+)
TCONV_GEMM = HandWrittenKernel("mbu_tconv")
#: the 3x3 conv with K packed across taps (AND encoding, sm_80+); the counted form makes the binary layers'
#: window count itself
TAPS_CONV, TAPS_CONV_COUNTED = HandWrittenKernel("mbu_bconv_taps"), HandWrittenKernel("mbu_bconv_taps_counted")


@dataclass
class Step:
    """One launch of a plan: ``step(stream)`` runs ``stage`` on a CUDA stream (or, with ``copy_skip``, copies
    the skip tensor of the transposed conv ``stage`` into its concatenation buffer).

    A binary layer also carries what the kernel-table benchmark (``lightning_mbu.bench.kernels``) needs to
    time its GEMM alone: the ``kernel`` it runs, its ``layer`` and ``args``, and ``window_count`` (the launch
    of each window's +1 count that the binary AND form runs first; None otherwise).
    """

    stage: Stage
    launch: Callable[[int], None]
    kernel: KernelSpec | HandWrittenKernel | None = None
    layer: BinaryLayer | None = None
    args: ConvArgs | None = None
    window_count: Callable[[int], None] | None = None
    copy_skip: bool = False

    @property
    def table_kernel(self) -> bool:
        """Whether the kernel comes from the CUTLASS table, so any table kernel that accepts ``args`` can run it."""
        return isinstance(self.kernel, KernelSpec)

    def __call__(self, stream: int) -> None:
        self.launch(stream)


@dataclass
class BinaryLayer:
    """A binary conv or transposed conv laid out as GEMM columns for one encoding (see mbu_api.h)."""

    stage: BinaryConv | TConvConcat
    encoding: str
    filt: torch.Tensor  # (k_cols, r, r, cin_words) int32
    thr: torch.Tensor  # (columns, 2) int32: (d * thr, d)
    planes: int
    alpha: int
    counts: bool  # subtract the window's +1 count (binary AND form)

    @property
    def r(self) -> int:
        return 3 if isinstance(self.stage, BinaryConv) else 1

    @classmethod
    def prepare(cls, stage, encoding: str, device) -> BinaryLayer:
        planes = stage.planes  # (P, Cout_pad, KH, KW, Cin_words)
        thr, d = raw_thresholds(stage, encoding)
        if isinstance(stage, TConvConcat):  # columns (kh, kw, o): sub-position-major, as the epilogue scatters
            planes = planes.transpose(0, 2, 3, 1, 4).reshape(planes.shape[0], -1, 1, 1, planes.shape[-1])
            thr, d = thr.transpose(1, 2, 0).reshape(-1), d.transpose(1, 2, 0).reshape(-1)
        if stage.mode == "masked":  # r = plane A - plane B, blocks of a word's columns of A then of B
            first, second = (planes[0], planes[1]) if encoding == "and" else (planes[1], planes[0])
            cols = np.stack([first, second]).reshape(2, -1, WORD_BITS, *planes.shape[2:]).transpose(1, 0, 2, 3, 4, 5)
            filt, n_planes, alpha, counts = cols.reshape(-1, *planes.shape[2:]), 2, 1, False
        elif encoding == "and":  # r = 2 popc(a' & b') - popc(a' & m)
            filt, n_planes, alpha, counts = planes[0], 1, 2, True
        else:  # r = popc(a' ^ b')
            filt, n_planes, alpha, counts = planes[0], 1, 1, False
        pairs = np.stack([d.astype(np.int64) * thr, d], axis=-1).astype(np.int32)
        return cls(stage, encoding, torch.from_numpy(np.ascontiguousarray(filt)).to(device),
                   torch.from_numpy(pairs).to(device), n_planes, alpha, counts)

    def args(self, x: torch.Tensor, out: torch.Tensor, count: torch.Tensor | None) -> ConvArgs:
        """Arguments for input bits ``x`` (N, H, W, words), contiguous; ``out`` (N, P', Q', total words) a buffer
        whose last axis this layer writes from the view's first word (a slice of a concatenation buffer)."""
        n, h, w, cw = x.shape
        st = self.stage
        return ConvArgs(
            n=n, h=h, w=w, c_bits=WORD_BITS * cw, k_cols=self.filt.shape[0], r=self.r, s=self.r, pad=self.r // 2,
            planes=self.planes, alpha=self.alpha, row_count=_ptr(count), act=x.data_ptr(), filt=self.filt.data_ptr(),
            thr=self.thr.data_ptr(), out=out.data_ptr(), out_pixel_stride=out.stride(2), out_word_offset=0,
            out_words=words(st.cout), scatter=int(isinstance(st, TConvConcat)))


def _bits_view_ok(t: torch.Tensor) -> bool:
    """A (N, H, W, words) view whose pixels are evenly spaced with contiguous words (a slice of the last axis)."""
    n, h, w, c = t.shape
    s = t.stride()
    return s[3] == 1 and s[1] == w * s[2] and s[0] == h * s[1]


class CUDAPackedNet(nn.Module):
    """A PackedNet on the GPU: ``forward(images) -> logits``; ``run`` returns every stage's output.

    Args:
        net: the packed graph (validated here).
        encoding: "and" or "xor" (sm_80-89 only); default: the file's ``default_encoding`` where the kernel
            table has it for this GPU, else "and" (with a warning).
        graphs: capture a CUDA graph per input shape and replay it in ``forward``.
        device: the CUDA device (default: the current one).
        hand_written: run the issue-13 stage kernels (AND encoding): first conv on FP16 tensor cores, vector
            max-pool, the transposed conv as one b1 GEMM, the K-packed 3x3 conv. Off by default until their GPU
            tests (tests/test_bconv_taps.py, tests/test_cuda_stages.py) have passed on hardware; off, every
            binary layer runs the CUTLASS kernels that were checked bit-exact on H100/H200.
    """

    def __init__(self, net: PackedNet, encoding: str | None = None, graphs: bool = True, device=None,
                 hand_written: bool = False):
        super().__init__()
        net.validate()
        cc = device_cc(device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self.encoding = choose_encoding(encoding, net.default_encoding, cc)
        self.net, self.cc, self.graphs = net, cc, graphs
        self.hand_written = hand_written and self.encoding == "and"
        self.lib = Library(cc)
        self.segments = net.segments()
        self.layers = {s.name: BinaryLayer.prepare(s, self.encoding, self.device) for s in net.threshold_layers}
        first, final = net.stages[0], net.stages[-1]
        cout_pad = words(first.cout) * WORD_BITS
        weight = torch.zeros(cout_pad, first.cin, 3, 3)
        weight[: first.cout] = torch.from_numpy(first.weight)
        scale, shift = torch.zeros(cout_pad), torch.full((cout_pad,), -1.0)  # padding channels: bit 0
        scale[: first.cout], shift[: first.cout] = torch.from_numpy(first.scale), torch.from_numpy(first.shift)
        self.first = [t.to(self.device).contiguous() for t in (weight, scale, shift)]
        self.final = [torch.from_numpy(t).to(self.device).contiguous() for t in (final.weight, final.bias)]
        # the concatenation each skip tensor is written into (when a binary conv produces it)
        self.concat_of = {s.skip: s for s in net.stages if isinstance(s, TConvConcat)
                          and isinstance(self._stage(s.skip), BinaryConv)}
        self._plans: dict[tuple, _Plan] = {}

    def _stage(self, name: str):
        return next(s for s in self.net.stages if s.name == name)

    # -- execution ------------------------------------------------------------------------------
    def plan(self, shape: tuple[int, int, int, int]) -> _Plan:
        """Buffers and kernel choices for padded inputs of ``shape`` (N, C, H, W), built once per shape."""
        if shape not in self._plans:
            self._plans[shape] = _Plan(self, shape)
        return self._plans[shape]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return prepare(x, self.net.input, device=self.device)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output for images ``x`` (N, C, H, W), eagerly: NHWC int32 bit words (a skip tensor as a
        view into its concatenation buffer), logits last (padded size). Outputs are the plan's buffers, reused
        by the next call of the same shape."""
        xp = self._pad(x)
        plan = self.plan(tuple(xp.shape))
        plan.input.copy_(xp)
        plan.launch()
        return dict(plan.env)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = self._pad(x)
        plan = self.plan(tuple(xp.shape))
        plan.input.copy_(xp)
        if self.graphs:
            plan.replay()
        else:
            plan.launch()
        return plan.env[self.net.stages[-1].name][..., :h, :w].clone()


class _Plan:
    """Everything one input shape needs: stage buffers, kernel arguments, an optional CUDA graph."""

    def __init__(self, owner: CUDAPackedNet, shape: tuple[int, int, int, int]):
        self.owner, self.graph = owner, None
        dev, net = owner.device, owner.net
        n, _, h, w = shape
        self.input = torch.empty(shape, device=dev)
        self.env: dict[str, torch.Tensor] = {"input": self.input}
        self.steps: list[Step] = []  # in launch order, skip copies included
        self.step_of: dict[str, Step] = {}  # each stage's step, by stage name
        #: the kernel each binary layer runs (a table KernelSpec or a HandWrittenKernel)
        self.choices: dict[str, KernelSpec | HandWrittenKernel] = {}
        dims = {"input": (h, w)}
        concat_bufs: dict[str, torch.Tensor] = {}
        for st in net.stages:
            src_h, src_w = dims[st.src]
            out_h, out_w = (src_h // 2, src_w // 2) if isinstance(st, MaxPool) else \
                (2 * src_h, 2 * src_w) if isinstance(st, TConvConcat) else (src_h, src_w)
            dims[st.name] = (out_h, out_w)
            if isinstance(st, FinalConv):
                out = torch.empty(n, st.num_classes, out_h, out_w, device=dev)
            elif isinstance(st, TConvConcat):
                out = concat_bufs.pop(st.skip, None)
                if out is None:
                    out = self._concat_buffer(st, n, out_h, out_w)
                    self.steps.append(self._copy_skip(st, out))
            elif st.name in owner.concat_of:  # write into the first words of the concatenation buffer
                cat = owner.concat_of[st.name]
                buf = self._concat_buffer(cat, n, out_h, out_w)
                concat_bufs[st.name] = buf
                out = buf[..., : words(st.cout)]
            else:
                out = torch.empty(n, out_h, out_w, sum(words(c) for c in owner.segments[st.name]),
                                  dtype=torch.int32, device=dev)
            self.env[st.name] = out
            self.step_of[st.name] = self._step(st, out)
            self.steps.append(self.step_of[st.name])

    def _concat_buffer(self, cat: TConvConcat, n: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(n, h, w, sum(words(c) for c in self.owner.segments[cat.name]), dtype=torch.int32,
                           device=self.owner.device)

    def _copy_skip(self, cat: TConvConcat, buf: torch.Tensor) -> Step:
        ws = sum(words(c) for c in self.owner.segments[cat.skip])
        return Step(cat, lambda stream: buf[..., :ws].copy_(self.env[cat.skip]), copy_skip=True)

    def _step(self, st, out: torch.Tensor) -> Step:
        lib, owner = self.owner.lib.lib, self.owner
        if isinstance(st, FirstConv):
            weight, scale, shift = owner.first

            def first(stream):
                x = self.env[st.src]
                n, c, h, w = x.shape
                if owner.hand_written:
                    code = lib.mbu_first_conv_tc(x.data_ptr(), int(x.dtype == torch.float16), n, c, h, w,
                                                 float(st.pad_value), weight.data_ptr(), scale.data_ptr(),
                                                 shift.data_ptr(), out.shape[-1], out.data_ptr(), stream)
                else:
                    code = lib.mbu_first_conv(x.data_ptr(), n, c, h, w, float(st.pad_value), weight.data_ptr(),
                                              scale.data_ptr(), shift.data_ptr(), out.shape[-1], out.data_ptr(),
                                              stream)
                _check(code, f"stage {st.name}")
            return Step(st, first)
        if isinstance(st, MaxPool):
            def pool(stream):
                x = self.env[st.src]
                assert _bits_view_ok(x)
                n, h, w, c = x.shape
                pool_fn = lib.mbu_max_pool_vec if owner.hand_written else lib.mbu_max_pool
                _check(pool_fn(x.data_ptr(), x.stride(2), 0, n, h, w, c, out.data_ptr(), stream), f"stage {st.name}")
            return Step(st, pool)
        if isinstance(st, FinalConv):
            weight, bias = owner.final

            def final(stream):
                x = self.env[st.src]
                assert _bits_view_ok(x)
                n, h, w, c = x.shape
                _check(lib.mbu_final_conv(x.data_ptr(), x.stride(2), n, h, w, c, weight.data_ptr(), bias.data_ptr(),
                                          st.num_classes, out.data_ptr(), stream), f"stage {st.name}")
            return Step(st, final)
        layer = owner.layers[st.name]
        src = self.env[st.src]
        x = src if src.is_contiguous() else torch.empty(src.shape, dtype=torch.int32, device=src.device)
        if isinstance(st, TConvConcat):  # the transposed conv's words follow the skip's
            ws = sum(words(c) for c in owner.segments[st.skip])
            target = out[..., ws:]
        else:
            target = out
        taps_conv = isinstance(st, BinaryConv) and owner.hand_written
        count = torch.empty(x.shape[:3], dtype=torch.int32, device=x.device) \
            if layer.counts and not taps_conv else None
        args = layer.args(x, target, count)
        gemm_tconv = isinstance(st, TConvConcat) and owner.hand_written
        if gemm_tconv:  # one b1 GEMM over both planes; its epilogue writes into the concat buffer (tconv.cu)
            spec, fn = TCONV_GEMM, lib.mbu_tconv
        elif taps_conv:  # both planes in one GEMM, the window count formed in the kernel (bconv_taps.cu)
            spec = TAPS_CONV_COUNTED if layer.counts else TAPS_CONV
            fn = getattr(lib, spec.name)
        else:
            key = layer_key(owner.encoding, layer.r, args.c_bits, args.k_cols, x.shape[1], x.shape[2])
            spec = owner.lib.choose(owner.encoding, args, key)
            fn = owner.lib.conv_fn(spec)
        self.choices[st.name] = spec
        args_ref = ctypes.byref(args)

        def window_count(stream):
            n, h, w, c = x.shape
            _check(lib.mbu_window_count(x.data_ptr(), n, h, w, c, layer.r, count.data_ptr(), stream),
                   f"stage {st.name} (window count)")

        def conv(stream):
            if x is not src:
                x.copy_(src)
            if count is not None:
                window_count(stream)
            _check(fn(args_ref, stream), f"stage {st.name} ({spec.name})")
        return Step(st, conv, kernel=spec, layer=layer, args=args,
                    window_count=window_count if count is not None else None)

    def launch(self) -> None:
        stream = torch.cuda.current_stream(self.owner.device).cuda_stream
        for step in self.steps:
            step(stream)

    def replay(self) -> None:
        if self.graph is None:
            self.launch()  # warm-up: lazy kernel attributes are set outside the capture
            torch.cuda.synchronize(self.owner.device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.launch()
        self.graph.replay()


def build(net: PackedNet, encoding: str | None = None, **options) -> CUDAPackedNet:
    """The backend entry point of ``load_packed(path, backend="cuda")``; options: ``graphs``, ``device``,
    ``hand_written``."""
    return CUDAPackedNet(net, encoding=encoding, **options)
