"""The CUDA backend against the spec (docs/format.md) and the CPU reference engine, bit for bit.

The first tests need no GPU: they replay, in numpy, the GEMM the kernels compute over the columns
``BinaryLayer`` lays out, so the layout and the epilogue rule are checked on every CI run. The
``gpu`` tests run every kernel of the table and the whole net on the device, on fresh random
inputs, odd sizes and batch sizes 1 and 3.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from random_nets import randomize

from cutlass_kernels.table import KernelTable
from lightning_mbu import MBUNet
from lightning_mbu.export import fold, pack_folded
from lightning_mbu.ops.bits import pack_bits, popcount, unpack_bits, words
from lightning_mbu.ops.cpu import CPUPackedNet
from lightning_mbu.ops.float_ops import first_conv_preactivation
from lightning_mbu.ops.graph import ENCODINGS, BinaryConv, TConvConcat

cuda = pytest.importorskip("lightning_mbu.ops.cuda")



def gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


# -- random layers and their exact reference (docs/format.md section 4) ---------------------------
def random_bits(rng, shape, channels: int) -> np.ndarray:
    """Packed random activations ``shape + (words,)`` with zero padding-channel bits."""
    return pack_bits(rng.random((*shape, channels)) < 0.5, (channels,))


def random_layer(rng, kind, mode: str, cin: int, cout: int):
    """A BinaryConv or TConvConcat with random planes and thresholds (padding rows always-off)."""
    k = 3 if kind is BinaryConv else 2
    w = rng.integers(-1, 2, size=(cout, k, k, cin)) if mode == "masked" else rng.choice([-1, 1], (cout, k, k, cin))
    cout_pad = words(cout) * 32
    planes = [w > 0, w < 0] if mode == "masked" else [w > 0]
    planes = np.stack([pack_bits(p, (cin,)) for p in planes])
    planes = np.concatenate([planes, np.zeros((planes.shape[0], cout_pad - cout, *planes.shape[2:]), np.int32)], 1)
    n = (9 if kind is BinaryConv else 1) * cin
    spread = int(np.sqrt(n)) + 1
    theta = np.full(cout_pad, n + 1, np.int32)
    theta[:cout] = rng.integers(-2 * spread, 2 * spread + 1, cout)
    direction = np.ones(cout_pad, np.int8)
    direction[:cout] = rng.choice([-1, 1], cout)
    extra = {"skip": "skip"} if kind is TConvConcat else {}
    st = kind("layer", "src", mode=mode, cin_segments=(cin,), cout=cout, planes=planes, theta=theta,
              direction=direction, **extra)
    st.validate({"src": (cin,)})
    return st


def reference_bits(st, x_words: np.ndarray) -> np.ndarray:
    """The layer's packed output from the exact integer accumulator (float64, small integers: exact)."""
    x = torch.from_numpy(unpack_bits(x_words, st.cin_segments).astype(np.float64) * 2 - 1).permute(0, 3, 1, 2)
    b = [torch.from_numpy(unpack_bits(p, st.cin_segments).astype(np.float64)) for p in st.planes]
    w = b[0] - b[1] if st.mode == "masked" else 2 * b[0] - 1  # (Cout_pad, KH, KW, Cin)
    if isinstance(st, BinaryConv):
        acc = F.conv2d(F.pad(x, (1, 1, 1, 1), value=-1.0), w.permute(0, 3, 1, 2))
    else:
        acc = F.conv_transpose2d(x, w.permute(3, 0, 1, 2), stride=2)
    t = torch.from_numpy(st.theta.astype(np.float64))[None, :, None, None]
    d = torch.from_numpy(st.direction.astype(np.int64))[None, :, None, None]
    bits = torch.where(d > 0, acc >= t, acc <= t)[:, : st.cout]
    return pack_bits(bits.permute(0, 2, 3, 1).numpy(), (st.cout,))


# -- no GPU: the column layout and epilogue rule, replayed in numpy --------------------------------
def emulate(layer, x_words: np.ndarray) -> np.ndarray:
    """What the fused kernel computes: popcount GEMM over the prepared columns, then the epilogue."""
    n, h, w, cw = x_words.shape
    r = layer.r
    if r == 3:
        p = np.pad(x_words, ((0, 0), (1, 1), (1, 1), (0, 0)))
        a = np.stack([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=3).reshape(n * h * w, -1)
    else:
        a = x_words.reshape(n * h * w, cw)
    b = layer.filt.cpu().numpy().reshape(layer.filt.shape[0], -1)
    op = np.bitwise_and if layer.encoding == "and" else np.bitwise_xor
    acc = popcount(op(a[:, None, :], b[None]), axis=-1)
    if layer.planes == 2:
        blocks = acc.reshape(len(a), -1, 2, 32)
        raw = layer.alpha * blocks[:, :, 0] - blocks[:, :, 1]
    else:
        count = popcount(a, axis=-1) if layer.counts else 0
        raw = layer.alpha * acc.reshape(len(a), -1, 32) - (count[:, None, None] if layer.counts else 0)
    dthr, d = layer.thr.cpu().numpy().reshape(-1, 32, 2).transpose(2, 0, 1)
    bits = (d[None] * raw >= dthr[None]).reshape(len(a), -1)
    if isinstance(layer.stage, BinaryConv):
        return pack_bits(bits.reshape(n, h, w, -1), (bits.shape[-1],))
    cp = bits.shape[-1] // 4  # columns (kh, kw, o) -> pixel (2i + kh, 2j + kw)
    bits = bits.reshape(n, h, w, 2, 2, cp).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, cp)
    return pack_bits(bits, (cp,))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("mode", ["binary", "masked"])
@pytest.mark.parametrize("kind", [BinaryConv, TConvConcat])
def test_column_layout_and_epilogue_reproduce_the_spec(kind, mode, encoding):
    rng = np.random.default_rng([ENCODINGS.index(encoding), len(mode), kind is BinaryConv])
    st = random_layer(rng, kind, mode, cin=45, cout=40)
    x = random_bits(rng, (2, 5, 7), 45)
    layer = cuda.BinaryLayer.prepare(st, encoding, "cpu")
    got = emulate(layer, x)
    assert np.array_equal(got[..., : words(st.cout)], reference_bits(st, x))


def test_xor_is_refused_on_hopper_and_unknown_encodings_everywhere():
    with pytest.raises(ValueError, match="'xor' has no kernel on sm_90"):
        cuda.check_runs("xor", 90)
    with pytest.raises(ValueError, match="unknown encoding 'or'"):
        cuda.check_runs("or", 80)
    cuda.check_runs("xor", 86)
    cuda.check_runs("and", 90)


def test_the_file_default_encoding_is_honoured_where_the_table_has_kernels_for_it():
    assert cuda.choose_encoding(None, "xor", 86) == "xor"
    assert cuda.choose_encoding("and", "xor", 86) == "and"
    with pytest.warns(UserWarning, match="'xor' has no kernel on sm_90; running 'and'"):
        assert cuda.choose_encoding(None, "xor", 90) == "and"
    with pytest.raises(ValueError, match="'xor' has no kernel on sm_90"):  # asked for: an error, not a fallback
        cuda.choose_encoding("xor", "and", 90)


# -- GPU: every kernel, every stage, the whole net ------------------------------------------------
@pytest.fixture(scope="module")
def lib():
    return cuda.Library(cuda.device_cc())


def _run_layer(lib, spec, st, x_words, encoding, fused=True):
    """Run one layer through kernel ``spec``; returns (its output words, the untouched skip words)."""
    dev = torch.device("cuda")
    layer = cuda.BinaryLayer.prepare(st, encoding, dev)
    x = torch.from_numpy(x_words).to(dev)
    n, h, w, _ = x.shape
    ow = words(st.cout)
    skip = 1 if isinstance(st, TConvConcat) else 0
    oh, ow_px = (2 * h, 2 * w) if skip else (h, w)
    out = torch.full((n, oh, ow_px, skip + ow), 0x5A5A5A5A, dtype=torch.int32, device=dev)  # poison
    count = torch.empty(n, h, w, dtype=torch.int32, device=dev) if layer.counts else None
    args = layer.args(x, out[..., skip:], count)
    assert lib.accepts(spec, args), spec.name
    stream = torch.cuda.current_stream().cuda_stream
    if count is not None:
        cuda._check(lib.lib.mbu_window_count(x.data_ptr(), n, h, w, x.shape[-1], layer.r, count.data_ptr(), stream),
                    "count")
    if fused:
        cuda._check(lib.conv_fn(spec)(args, stream), spec.name)
    else:
        p = h + 2 * args.pad - args.r + 1
        acc = torch.empty(n * p * (w + 2 * args.pad - args.s + 1), args.k_cols, dtype=torch.int32, device=dev)
        cuda._check(lib.conv_fn(spec, "_int32")(args, acc.data_ptr(), stream), spec.name + " int32")
        cuda._check(lib.lib.mbu_threshold_pack(args, acc.data_ptr(), stream), "threshold_pack")
    torch.cuda.synchronize()
    out = out.cpu().numpy()
    return out[..., skip:], out[..., :skip]


@gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "int32+pack"])
@pytest.mark.parametrize("spec", KernelTable.load().kernels, ids=lambda s: s.name)
def test_every_kernel_is_bit_exact(lib, spec, fused):
    if not spec.runs_on(lib.cc):
        pytest.skip(f"{spec.name} does not run on sm_{lib.cc}")
    rng = np.random.default_rng()  # fresh inputs every run
    cin = {"few_channels": spec.alignment, "fixed_channels": spec.alignment}.get(spec.iterator, 3 * spec.alignment)
    for kind, mode, n, h, w in [(BinaryConv, "masked", 3, 13, 21), (BinaryConv, "binary", 1, 9, 30),
                                (TConvConcat, "binary", 3, 7, 11), (TConvConcat, "masked", 1, 5, 9)]:
        if kind is TConvConcat and spec.iterator in ("few_channels", "fixed_channels"):
            continue  # 1x1 problems take the regular iterators
        cout = int(rng.integers(20, 100))
        st = random_layer(rng, kind, mode, cin=cin, cout=cout)
        x = random_bits(rng, (n, h, w), cin)
        got, skip = _run_layer(lib, spec, st, x, spec.encoding, fused)
        assert np.array_equal(got, reference_bits(st, x)), f"{spec.name} {kind.kind} {mode} {n}x{h}x{w}"
        assert (skip == 0x5A5A5A5A).all(), "the transposed conv wrote over the skip words"


def _dyadic(net):
    """Make the float first and last layers exact in float32 (multiples of 1/8, power-of-two scales, shifts
    off the grid), so the CPU engine and the GPU agree on every bit and logit whatever the summation order."""
    first, final = net.stages[0], net.stages[-1]
    first.weight = np.round(first.weight * 8).astype(np.float32) / 8
    first.scale = np.exp2(np.round(np.log2(np.abs(first.scale) + 1e-3))).astype(np.float32) * np.sign(first.scale)
    first.shift = ((np.round(first.shift * 64) + 0.5) / 64).astype(np.float32)
    final.weight = np.round(final.weight * 16).astype(np.float32) / 16
    final.bias = np.round(final.bias * 16).astype(np.float32) / 16
    return net


def _dyadic_images(rng, shape):
    return torch.from_numpy(rng.integers(-16, 17, shape).astype(np.float32) / 8)


def _packed(config, base, seed, **kw):
    torch.manual_seed(seed)
    return _dyadic(pack_folded(fold(randomize(MBUNet(config, base=base, num_classes=2, **kw), seed=seed))))


@gpu
@pytest.mark.parametrize("config,base,batch,size", [
    ("BBBBMMMMBBBB", 8, 1, (37, 45)),
    ("MBMBBMBMMBMB", 12, 3, (50, 33)),
    ("MMMMMMMMMMMM", 4, 4, (16, 16)),
])
@pytest.mark.parametrize("hand_written", [False, True])
def test_whole_net_matches_the_cpu_engine_stage_by_stage(config, base, batch, size, hand_written):
    packed = _packed(config, base, seed=base + batch)
    rng = np.random.default_rng()
    x = _dyadic_images(rng, (batch, 3, *size))
    ref = CPUPackedNet(packed, encoding="and").run(x)
    gpu_net = cuda.build(packed, hand_written=hand_written)
    got = gpu_net.run(x.cuda())
    for st in packed.stages:
        a, b = ref[st.name], got[st.name].cpu()
        b = b.numpy() if st.kind != "final_conv" else b
        if st.kind == "final_conv":
            assert torch.equal(a, b), st.name
        else:
            assert np.array_equal(a, b), f"{st.name}: {np.mean(a != b):.3%} of words differ"
    logits = gpu_net(x.cuda())  # CUDA graph replay, cropped
    assert logits.shape == (batch, 2, *size)
    assert torch.equal(logits.cpu(), ref[packed.stages[-1].name][..., : size[0], : size[1]])
    x2 = _dyadic_images(rng, (batch, 3, *size))  # a second replay of the same graph on new data
    assert torch.equal(gpu_net(x2.cuda()).cpu(), CPUPackedNet(packed, encoding="and")(x2))


@gpu
def test_first_layer_agrees_except_within_float_rounding_of_zero():
    torch.manual_seed(0)
    packed = pack_folded(fold(randomize(MBUNet("B" * 12, base=8), seed=1)))  # plain float weights
    x = torch.randn(3, 3, 29, 35)
    st = packed.stages[0]
    got = cuda.build(packed).run(x.cuda())[st.name].cpu().numpy()
    ref = CPUPackedNet(packed).run(x)[st.name]
    xp = F.pad(x.double(), (0, (-x.shape[-1]) % 16, 0, (-x.shape[-2]) % 16))
    y = first_conv_preactivation(xp, *(torch.from_numpy(t).double() for t in (st.weight, st.scale, st.shift)),
                                 st.pad_value)
    near = pack_bits((y.abs() < 1e-4).permute(0, 2, 3, 1).numpy(), (st.cout,))
    assert np.array_equal(got & ~near, ref & ~near)


@gpu
def test_batch_any_size_and_wrong_input_is_refused():
    packed = _packed("BBBBMMMMBBBB", 4, seed=3)
    net = cuda.build(packed, graphs=False)
    rng = np.random.default_rng()
    x = _dyadic_images(rng, (5, 3, 20, 28))
    assert torch.equal(net(x.cuda()).cpu(), CPUPackedNet(packed, encoding="and")(x))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        net(torch.zeros(1, 4, 16, 16, device="cuda"))
