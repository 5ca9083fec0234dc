"""The K-packed 3x3 binary conv (cutlass_kernels/src/bconv_taps.cuh).

CPU: an emulation of its K axis ((tap, cin word) flattened and cut into 256-bit slices of 8 words,
zero words outside the image, masked layers as one GEMM over (b+, b-) column blocks of 32) forms the
CPU engine's raw counts for the AND encoding, on random odd-sized inputs.
GPU (mark ``gpu``): the kernel, built alone from its source, writes bit for bit the CPU engine's
output (``_PopcountLayer`` on ``_im2col3x3``, the same code ``CPUPackedNet`` runs) on fresh random
inputs: odd sizes, batch 1 and 3, cin 30/45/64/128/300/1024 (every chunk width), cout
40/64/96, binary and masked, the window count given or formed in the kernel, into a poisoned slice
of a wider buffer whose other words must stay untouched.
"""

import ctypes
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_mbu.ops.bits import channel_mask, pack_bits, words
from lightning_mbu.ops.cpu import _im2col3x3, _PopcountLayer
from lightning_mbu.ops.graph import BinaryConv

SLICE_WORDS = 8  # 256 bits: one mma.sync m16n8k256


def random_stage(mode: str, cin_segments: tuple[int, ...], cout: int, rng) -> BinaryConv:
    cw = sum(words(c) for c in cin_segments)
    cout_pad = words(cout) * 32
    mask = channel_mask(cin_segments)
    planes = np.zeros((2 if mode == "masked" else 1, cout_pad, 3, 3, cw), np.int32)
    raw = rng.integers(0, 2**32, size=planes.shape[1:], dtype=np.uint32).view(np.int32) & mask
    if mode == "masked":
        sign = rng.integers(0, 2**32, size=raw.shape, dtype=np.uint32).view(np.int32)
        planes[0], planes[1] = raw & sign, raw & ~sign
    else:
        planes[0] = raw
    planes[:, cout:] = 0
    return BinaryConv(name="c", src="x", mode=mode, cin_segments=cin_segments, cout=cout, planes=planes,
                      theta=np.zeros(cout_pad, np.int32), direction=np.ones(cout_pad, np.int8))


def kernel_filter(stage: BinaryConv) -> np.ndarray:
    """The filter the kernel reads: (k_cols, 9 * cin_words) words; masked columns in blocks of 32 b+ then 32 b-."""
    p = stage.planes.reshape(stage.planes.shape[0], stage.cout_pad, -1)
    if stage.mode != "masked":
        return p[0]
    blocks = p.reshape(2, -1, 32, p.shape[-1]).transpose(1, 0, 2, 3)  # (word, plane, 32, K)
    return blocks.reshape(-1, p.shape[-1])


def emulate(x: np.ndarray, filt: np.ndarray, planes: int, alpha: int, row_count) -> np.ndarray:
    """The kernel's arithmetic: A gathered per (row, K word) exactly as bconv_taps_kernel indexes it."""
    n, h, w, cw = x.shape
    kwords = 9 * cw
    kpad = -(-kwords // SLICE_WORDS) * SLICE_WORDS
    m = np.arange(n * h * w)
    img, rem = m // (h * w), m % (h * w)
    a = np.zeros((m.size, kpad), np.uint32)
    for k in range(kwords):
        tap, word = k // cw, k % cw
        i, j = rem // w + tap // 3 - 1, rem % w + tap % 3 - 1
        ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        a[ok, k] = x.view(np.uint32)[img[ok], i[ok], j[ok], word]
    b = np.zeros((filt.shape[0], kpad), np.uint32)
    b[:, :kwords] = filt.view(np.uint32)
    acc = np.zeros((m.size, filt.shape[0]), np.int64)
    for s in range(kpad // SLICE_WORDS):  # one m16n8k256 .and.popc per slice
        sl = slice(s * SLICE_WORDS, (s + 1) * SLICE_WORDS)
        acc += np.bitwise_count(a[:, None, sl] & b[None, :, sl]).sum(-1, dtype=np.int64)
    if planes == 2:
        acc = acc.reshape(m.size, -1, 2, 32)
        return (alpha * acc[:, :, 0] - acc[:, :, 1]).reshape(m.size, -1)
    return alpha * acc - (row_count[:, None] if row_count is not None else 0)


@pytest.mark.parametrize("mode", ["binary", "masked"])
@pytest.mark.parametrize("cin_segments,cout,size,batch", [((64,), 64, (9, 13), 1), ((40, 64), 96, (7, 5), 3),
                                                          ((128,), 32, (5, 6), 1)])
def test_k_packed_counts_match_cpu_engine(mode, cin_segments, cout, size, batch):
    rng = np.random.default_rng(zlib.crc32(repr((mode, cin_segments, size)).encode()))
    stage = random_stage(mode, cin_segments, cout, rng)
    cw = stage.cin_words
    # activations as the engine holds them: bits only at real channel positions
    x = rng.integers(0, 2**32, size=(batch, *size, cw), dtype=np.uint32).view(np.int32) & channel_mask(cin_segments)
    cols = _im2col3x3(x)
    layer = _PopcountLayer(stage, "and")
    with ThreadPoolExecutor(1) as pool:
        want = layer.raw(cols, pool)
    if mode == "masked":
        got = emulate(x, kernel_filter(stage), 2, 1, None)
    else:  # the binary AND form's row count popc(a' & m) over the window, as the fallback path supplies it
        ones = np.tile(channel_mask(cin_segments), 9).view(np.uint32)
        row_count = np.bitwise_count(cols.view(np.uint32) & ones).sum(-1, dtype=np.int64)
        got = emulate(x, kernel_filter(stage), 1, 2, row_count)
    np.testing.assert_array_equal(got, want)


# -- GPU: the kernel against the CPU engine ------------------------------------------------------
POISON = 0x5A5A5A5A
SOURCE = Path(__file__).resolve().parents[1] / "cutlass_kernels" / "src" / "bconv_taps.cu"


def build_kernel(out_dir: Path, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``bconv_taps.cu`` alone as a shared library for the current GPU (no CUTLASS needed)."""
    from cutlass_kernels.build import NVCC_FLAGS, device_cc, find_nvcc, gencode

    so = out_dir / ("bconv_taps" + "".join("_" + d.replace("=", "") for d in defines) + ".so")
    if not so.is_file():
        cmd = [find_nvcc(), *NVCC_FLAGS, *gencode(device_cc()), *(f"-D{d}" for d in defines), "-shared", "-o",
               str(so), str(SOURCE)]
        subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(str(so))
    for name in ("mbu_bconv_taps", "mbu_bconv_taps_counted"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def taps_lib(tmp_path_factory):
    return build_kernel(tmp_path_factory.mktemp("bconv_taps"))


def random_bits(rng, shape, channels: int) -> np.ndarray:
    """Packed random activations ``shape + (words,)`` with zero padding-channel bits."""
    return pack_bits(rng.random((*shape, channels)) < 0.5, (channels,))


def random_layer(rng, mode: str, cin: int, cout: int) -> BinaryConv:
    """A 3x3 BinaryConv with random planes and thresholds near the accumulator's spread."""
    stage = random_stage(mode, (cin,), cout, rng)
    n = 9 * cin
    spread = int(np.sqrt(n)) + 1
    stage.theta[:cout] = rng.integers(-2 * spread, 2 * spread + 1, cout)
    stage.theta[cout:] = n + 1  # padding channels: always off
    stage.direction[:cout] = rng.choice([-1, 1], cout)
    stage.validate({"x": (cin,)})
    return stage


def cpu_engine_bits(stage: BinaryConv, x: np.ndarray) -> np.ndarray:
    n, h, w, _ = x.shape
    with ThreadPoolExecutor(4) as pool:
        bits = _PopcountLayer(stage, "and").bits(_im2col3x3(x), pool)
    return pack_bits(bits.reshape(n, h, w, stage.cout_pad), (stage.cout_pad,))


def run_gpu(lib, stage: BinaryConv, x: np.ndarray, count_here: bool, lead: int = 1, tail: int = 2):
    """The kernel's words written into words [lead, lead + cout words) of a poisoned buffer; (them, the rest)."""
    from lightning_mbu.ops import cuda

    dev = torch.device("cuda")
    layer = cuda.BinaryLayer.prepare(stage, "and", dev)
    xd = torch.from_numpy(x).to(dev)
    n, h, w, cw = xd.shape
    ow = words(stage.cout)
    buf = torch.full((n, h, w, lead + ow + tail), POISON, dtype=torch.int32, device=dev)
    stream = torch.cuda.current_stream().cuda_stream
    count = None
    if layer.counts and not count_here:  # the window count popc(a' & m), as the CUTLASS path's count step forms it
        ones = np.tile(channel_mask(stage.cin_segments), 9).view(np.uint32)
        count = np.bitwise_count(_im2col3x3(x).view(np.uint32) & ones).sum(-1, dtype=np.int32)
        count = torch.from_numpy(count).to(dev)
    args = layer.args(xd, buf[..., lead:], count)
    entry = lib.mbu_bconv_taps_counted if count_here else lib.mbu_bconv_taps
    err = entry(ctypes.addressof(args), stream)
    assert err == 0, f"bconv_taps returned {err}"
    torch.cuda.synchronize()
    got = buf.cpu().numpy()
    return got[..., lead:lead + ow], np.concatenate([got[..., :lead], got[..., lead + ow:]], -1)


@gpu
@pytest.mark.parametrize("mode", ["binary", "masked"])
@pytest.mark.parametrize("cin,cout,sizes", [
    (30, 40, [(1, 19, 23)]),                  # 1 word: 9 taps in two slices
    (64, 64, [(1, 97, 131), (3, 17, 40)]),    # 2 words: 4 taps per 256-bit slice (the stem, up4.conv2)
    (45, 40, [(3, 97, 131), (1, 5, 3)]),      # 2 words with padding channels; 2 output words, 1 partial
    (128, 96, [(1, 97, 131), (3, 16, 33)]),   # 4 words: 2 taps per slice, ldmatrix A; 3 output words
    (300, 64, [(3, 23, 29), (1, 97, 131)]),   # 10 words: two chunks of 8 (double-buffered), word copies
    (1024, 64, [(1, 9, 37)]),                 # 32 words: four 16-byte chunks (down4, up1 widths)
])
def test_bconv_taps_matches_cpu_engine(taps_lib, mode, cin, cout, sizes):
    rng = np.random.default_rng()  # fresh inputs every run
    for n, h, w in sizes:
        stage = random_layer(rng, mode, cin, cout)
        x = random_bits(rng, (n, h, w), cin)
        want = cpu_engine_bits(stage, x)[..., : words(cout)]
        for count_here in ([False, True] if mode == "binary" else [False]):
            got, others = run_gpu(taps_lib, stage, x, count_here)
            where = f"{mode} {cin}->{cout} {n}x{h}x{w} count_here={count_here}"
            assert np.array_equal(got, want), f"{where}: {(got != want).sum()} words differ"
            assert (others == POISON).all(), f"{where}: wrote outside its words"


@gpu
def test_bconv_taps_refuses_bad_problems(taps_lib):
    from lightning_mbu.ops import cuda

    rng = np.random.default_rng(0)
    stage = random_layer(rng, "masked", 64, 64)
    layer = cuda.BinaryLayer.prepare(stage, "and", torch.device("cuda"))
    x = torch.zeros(1, 4, 4, 2, dtype=torch.int32, device="cuda")
    out = torch.zeros(1, 4, 4, 2, dtype=torch.int32, device="cuda")
    args = layer.args(x, out, None)
    args.r = args.s = 1  # not a 3x3 conv
    assert taps_lib.mbu_bconv_taps(ctypes.addressof(args), None) == 1001
    args = layer.args(x, out, None)  # a masked layer has no window count to form
    assert taps_lib.mbu_bconv_taps_counted(ctypes.addressof(args), None) == 1002
