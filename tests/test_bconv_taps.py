"""CPU emulation of the K-packed 3x3 binary conv (cutlass_kernels/src/bconv_taps.cuh): its K axis is
(tap, cin word) flattened and cut into 256-bit slices of 8 words, its A operand gathered with zero
words outside the image, and masked layers run as one GEMM over (b+, b-) column blocks of 32. The raw
counts it forms must equal the CPU engine's for the AND encoding, on random odd-sized inputs."""

import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lightning_mbu.ops.bits import channel_mask, words
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
