"""The hand-written stage kernels around the binary convs, bit for bit against the reference.

- ``mbu_tconv``: the 2x2 stride-2 transposed conv as one b1 GEMM (both planes), written into a
  concatenation buffer; against the exact integer accumulator of the spec (as the CPU engine).
- ``mbu_first_conv_tc``: the float first layer on FP16 tensor cores (split-precision); against the
  CPU engine's ``first_conv_float`` + ``pack_bits``: exact on dyadic values, and off only within
  float rounding of the threshold on random ones.
- ``mbu_max_pool_vec``: the vector-load bit max-pool on concatenation-buffer slices.

Every case draws fresh random inputs, poisons the output first and includes odd sizes and
batch 1 and 3.
"""

import ctypes

import numpy as np
import pytest
import torch
from test_cuda_backend import random_bits, random_layer, reference_bits

from lightning_mbu.ops.bits import pack_bits, words
from lightning_mbu.ops.float_ops import first_conv_float, first_conv_preactivation
from lightning_mbu.ops.graph import TConvConcat

cuda = pytest.importorskip("lightning_mbu.ops.cuda")

POISON = 0x5A5A5A5A


def gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def lib():
    return cuda.Library(cuda.device_cc())


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


# -- transposed conv ------------------------------------------------------------------------------
def run_tconv(lib, st, x_words: np.ndarray, skip_words: int) -> tuple[np.ndarray, np.ndarray]:
    """``mbu_tconv`` into a poisoned concat buffer after ``skip_words`` words; (its words, the skip words)."""
    dev = torch.device("cuda")
    layer = cuda.BinaryLayer.prepare(st, "and", dev)
    x = torch.from_numpy(x_words).to(dev)
    n, h, w, cw = x.shape
    out = torch.full((n, 2 * h, 2 * w, skip_words + words(st.cout)), POISON, dtype=torch.int32, device=dev)
    count = torch.empty(n, h, w, dtype=torch.int32, device=dev) if layer.counts else None
    if count is not None:
        cuda._check(lib.lib.mbu_window_count(x.data_ptr(), n, h, w, cw, 1, count.data_ptr(), _stream()), "count")
    args = layer.args(x, out[..., skip_words:], count)
    cuda._check(lib.lib.mbu_tconv(ctypes.byref(args), _stream()), "mbu_tconv")
    torch.cuda.synchronize()
    got = out.cpu().numpy()
    return got[..., skip_words:], got[..., :skip_words]


@gpu
@pytest.mark.parametrize("mode", ["binary", "masked"])
@pytest.mark.parametrize("cin,cout,sizes", [
    (45, 40, [(1, 97, 131), (3, 13, 21)]),    # 2 input words: 4-byte copies; 2 output words
    (128, 64, [(3, 97, 131), (1, 16, 24)]),   # up_ct4 of the base-64 net: 16-byte copies, K padded to 256
    (300, 96, [(1, 31, 17), (3, 8, 9)]),      # 10 input words (two k-steps), 3 output words (odd count)
    (1024, 512, [(1, 9, 11), (3, 5, 7)]),     # up_ct1: four k-steps, 16 output words
])
def test_tconv_gemm_is_bit_exact(lib, mode, cin, cout, sizes):
    rng = np.random.default_rng()  # fresh inputs every run
    for i, (n, h, w) in enumerate(sizes):
        st = random_layer(rng, TConvConcat, mode, cin=cin, cout=cout)
        x = random_bits(rng, (n, h, w), cin)
        skip = 1 + i  # odd and even offsets: 4- and 8-byte output stores
        got, skip_words = run_tconv(lib, st, x, skip)
        assert np.array_equal(got, reference_bits(st, x)), f"{mode} {cin}->{cout} {n}x{h}x{w}"
        assert (skip_words == POISON).all(), "the transposed conv wrote over the skip words"


# -- first conv -----------------------------------------------------------------------------------
def run_first(lib, x: torch.Tensor, weight, scale, shift, pad_value: float) -> np.ndarray:
    """``mbu_first_conv_tc`` on images ``x`` (float32 or float16, NCHW); packed (N, H, W, words)."""
    dev = torch.device("cuda")
    cout, cin = weight.shape[:2]
    ow = words(cout)
    w_pad = torch.zeros(ow * 32, cin, 3, 3)
    w_pad[:cout] = weight
    s_pad, b_pad = torch.zeros(ow * 32), torch.full((ow * 32,), -1.0)  # padding channels: bit 0
    s_pad[:cout], b_pad[:cout] = scale, shift
    w_pad, s_pad, b_pad = (t.to(dev).contiguous() for t in (w_pad, s_pad, b_pad))
    xd = x.to(dev).contiguous()
    n, _, h, w = x.shape
    out = torch.full((n, h, w, ow), POISON, dtype=torch.int32, device=dev)
    code = lib.lib.mbu_first_conv_tc(xd.data_ptr(), int(x.dtype == torch.float16), n, cin, h, w, float(pad_value),
                                     w_pad.data_ptr(), s_pad.data_ptr(), b_pad.data_ptr(), ow, out.data_ptr(),
                                     _stream())
    cuda._check(code, "mbu_first_conv_tc")
    torch.cuda.synchronize()
    return out.cpu().numpy()


def reference_first(x: torch.Tensor, weight, scale, shift, pad_value: float) -> np.ndarray:
    """The CPU engine's first stage: float32 conv + folded batch-norm + sign, packed."""
    bits = first_conv_float(x.float(), weight, scale, shift, pad_value)
    return pack_bits(bits.permute(0, 2, 3, 1).numpy(), (weight.shape[0],))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("cin,cout", [(3, 64), (1, 20), (4, 70)])
def test_first_conv_tc_is_bit_exact_on_dyadic_values(lib, dtype, cin, cout):
    """Multiples of 1/8 (weights, images), power-of-two scales and shifts off the grid: every
    partial sum is exact in float32, so the tensor-core result must equal the reference bit for bit."""
    rng = np.random.default_rng()
    for n, h, w in [(1, 97, 131), (3, 16, 21)]:
        weight = torch.from_numpy(rng.integers(-16, 17, (cout, cin, 3, 3)) / 8).float()
        scale = torch.from_numpy(np.exp2(rng.integers(-3, 4, cout)) * rng.choice([-1, 1], cout)).float()
        shift = torch.from_numpy((rng.integers(-64, 64, cout) + 0.5) / 64).float()
        x = torch.from_numpy(rng.integers(-16, 17, (n, cin, h, w)) / 8).to(dtype)
        pad = float(rng.choice([0.0, -0.5]))
        got = run_first(lib, x, weight, scale, shift, pad)
        assert np.array_equal(got, reference_first(x, weight, scale, shift, pad)), f"{dtype} {n}x{cin}x{h}x{w}"


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_first_conv_tc_differs_only_within_float_rounding_of_the_threshold(lib, dtype):
    rng = np.random.default_rng()
    n, cin, cout, h, w = 3, 3, 64, 97, 131
    weight = torch.from_numpy(rng.normal(0, 0.3, (cout, cin, 3, 3))).float()
    scale = torch.from_numpy(rng.normal(0, 2, cout)).float()
    shift = torch.from_numpy(rng.normal(0, 1, cout)).float()
    x = torch.from_numpy(rng.normal(0, 1, (n, cin, h, w))).to(dtype)
    got = run_first(lib, x, weight, scale, shift, 0.0)
    ref = reference_first(x, weight, scale, shift, 0.0)
    y = first_conv_preactivation(x.double(), weight.double(), scale.double(), shift.double(), 0.0)
    near = pack_bits((y.abs() < 1e-4).permute(0, 2, 3, 1).numpy(), (cout,))
    assert np.array_equal(got & ~near, ref & ~near)
    assert np.mean(near != 0) < 0.01  # the exclusion is a thin band, not a blanket


@gpu
def test_first_conv_tc_refuses_bad_arguments(lib):
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match="bad argument"):  # two input channels: no instance
        run_first(lib, x, torch.zeros(8, 2, 3, 3), torch.ones(8), torch.zeros(8), 0.0)
    with pytest.raises(RuntimeError, match="bad argument"):  # a padding value fp16 cannot hold
        run_first(lib, x[:, :1].half(), torch.zeros(8, 1, 3, 3), torch.ones(8), torch.zeros(8), 0.1)


# -- max-pool -------------------------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("words_,stride,offset", [(2, 4, 0), (2, 4, 2), (1, 3, 1), (4, 4, 0), (3, 5, 2), (8, 16, 8)])
def test_max_pool_vec_is_the_or_of_four_words(lib, words_, stride, offset):
    rng = np.random.default_rng()
    for n, h, w in [(1, 96, 130), (3, 14, 22)]:
        buf = rng.integers(-2**31, 2**31, (n, h, w, stride), dtype=np.int64).astype(np.int32)
        a = buf[..., offset:offset + words_]
        ref = a[:, 0::2, 0::2] | a[:, 1::2, 0::2] | a[:, 0::2, 1::2] | a[:, 1::2, 1::2]
        src = torch.from_numpy(buf).cuda()
        out = torch.full((n, h // 2, w // 2, words_), POISON, dtype=torch.int32, device="cuda")
        cuda._check(lib.lib.mbu_max_pool_vec(src.data_ptr(), stride, offset, n, h, w, words_, out.data_ptr(),
                                             _stream()), "mbu_max_pool_vec")
        torch.cuda.synchronize()
        assert np.array_equal(out.cpu().numpy(), ref), f"{words_} words, stride {stride}, offset {offset}"
