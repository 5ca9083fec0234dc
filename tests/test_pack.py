"""Bit layouts and the XOR / AND accumulator forms, checked against plain integer arithmetic."""

import numpy as np
import pytest

from lightning_mbu.export.pack import pack_planes
from lightning_mbu.ops.bits import channel_mask, pack_bits, segment_positions, unpack_bits
from lightning_mbu.ops.graph import BinaryConv, TConvConcat, raw_thresholds


def test_channel_c_is_bit_c_mod_32_of_word_c_div_32_lsb_first():
    for c in (0, 1, 7, 8, 31, 32, 33, 63, 64, 95):
        bits = np.zeros(96, dtype=bool)
        bits[c] = True
        words = pack_bits(bits, (96,))
        assert words.dtype == np.int32 and words.shape == (3,)
        expected = np.zeros(3, dtype=np.uint32)
        expected[c // 32] = np.uint32(1) << np.uint32(c % 32)
        assert np.array_equal(words.view(np.uint32), expected)


def test_segments_are_word_aligned_and_padding_bits_stay_zero():
    rng = np.random.default_rng(0)
    segments = (5, 37, 32)
    assert list(segment_positions(segments)[[0, 4, 5, 41, 42]]) == [0, 4, 32, 68, 96]
    bits = rng.random((2, 3, 4, 74)) < 0.5
    words = pack_bits(bits, segments)
    assert words.shape == (2, 3, 4, 1 + 2 + 1)
    assert np.array_equal(unpack_bits(words, segments), bits)
    assert not (words & ~channel_mask(segments)).any()
    assert np.array_equal(channel_mask(segments).view(np.uint32),
                          np.array([0x1F, 0xFFFFFFFF, 0x1F, 0xFFFFFFFF], dtype=np.uint32))
    with pytest.raises(ValueError, match="73 channels given"):
        pack_bits(bits[..., :73], segments)


@pytest.mark.parametrize("mode", ["masked", "binary"])
def test_weight_planes_encode_the_weights(mode):
    rng = np.random.default_rng(1)
    segments = (12, 12)
    w = rng.integers(-1, 2, size=(7, 3, 3, 24)) if mode == "masked" else rng.choice([-1, 1], size=(7, 3, 3, 24))
    planes = pack_planes(w, mode, segments, cout_pad=32)
    assert planes.shape == (2 if mode == "masked" else 1, 32, 3, 3, 2) and planes.dtype == np.int32
    assert not planes[:, 7:].any()
    b = unpack_bits(planes[:, :7], segments).astype(int)
    assert np.array_equal(b[0] - b[1] if mode == "masked" else 2 * b[0] - 1, w)


def popc(x):
    return np.bitwise_count(x.view(np.uint32)).sum(axis=-1, dtype=np.int64)


@pytest.mark.parametrize("encoding", ["xor", "and"])
@pytest.mark.parametrize("mode", ["masked", "binary"])
@pytest.mark.parametrize("kind", [BinaryConv, TConvConcat])
def test_raw_counts_against_raw_thresholds_decide_as_acc_against_theta(kind, mode, encoding):
    """For random windows the raw popcount form, compared to raw_thresholds, equals acc >=/<= theta."""
    rng = np.random.default_rng([len(kind.kind), len(mode), len(encoding)])
    segments, cout, k = (20, 9), 40, kind.KERNEL
    cin = sum(segments)
    w = rng.integers(-1, 2, size=(cout, k, k, cin)) if mode == "masked" else rng.choice([-1, 1], size=(cout, k, k, cin))
    planes = pack_planes(w, mode, segments, cout_pad=64)
    stage = kind("layer", "src", mode=mode, cin_segments=segments, cout=cout, planes=planes,
                 theta=np.zeros(64, np.int32), direction=np.ones(64, np.int8),
                 **({"skip": "s"} if kind is TConvConcat else {}))
    n = stage.n
    # every regime: rising, falling, always-on, always-off; then padding channels always-off
    theta = rng.integers(-n, n + 1, size=64)
    direction = rng.choice([-1, 1], size=64)
    theta[:4], direction[:4] = [-(n + 1), n + 1, -(n + 1), n + 1], 1
    theta[cout:], direction[cout:] = n + 1, 1
    stage.theta, stage.direction = theta.astype(np.int32), direction.astype(np.int8)
    thr, d = raw_thresholds(stage, encoding)

    conv = kind is BinaryConv
    a = rng.random((50, 3, 3, cin) if conv else (50, cin)) < 0.5  # 50 windows of +-1 inputs
    if conv:
        a[:, 0] = False  # a row of spatial padding: -1, bit 0
    aw = pack_bits(a, segments).reshape(50, -1)
    pm1 = np.where(a, 1, -1).reshape(50, -1)
    columns = [(o,) for o in range(64)] if conv else [(o, i, j) for o in range(64) for i in range(2) for j in range(2)]
    for col in columns:
        o = col[0]
        wcol = (w[col] if o < cout else np.zeros(w[0][col[1:]].shape, int)).reshape(-1)
        acc = pm1 @ wcol
        expected = acc >= theta[o] if direction[o] > 0 else acc <= theta[o]
        pl = planes[(slice(None), *col)].reshape(planes.shape[0], -1)
        if mode == "masked" and encoding == "xor":
            r = popc(aw ^ pl[1]) - popc(aw ^ pl[0])
        elif mode == "masked":
            r = popc(aw & pl[0]) - popc(aw & pl[1])
        elif encoding == "xor":
            r = popc(aw ^ pl[0])
        else:
            r = 2 * popc(aw & pl[0]) - popc(aw & np.tile(channel_mask(segments), 9 if conv else 1))
        assert np.array_equal(d[col] * r >= d[col] * thr[col], expected), col
    assert thr.shape == ((64,) if kind is BinaryConv else (64, 2, 2))
