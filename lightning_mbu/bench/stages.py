"""Time the hand-written stage kernels against the ones they replace, one layer shape each.

Shapes are those of the base-64 MBU-Net at ``--size`` (default 640x960, the padded Carvana
frame): the first float conv (3 -> 64), the four transposed convs (up_ct1..4, binary and
masked) and the four bit max-pools, at each ``--batch``. Per row: median ms over ``--reps``
CUDA-event timings after a warm-up, the work rate (binary TOPS: 2 M N K over the GEMM as run,
both planes; or GB/s of compulsory traffic: each input read once, each output written once),
and whether the new kernel's output equals the old one's bit for bit on the same random input
(the old kernels are the bit-exact baseline of tests/test_cuda_backend.py). Run on the GPU::

    python -m lightning_mbu.bench.stages --batch 64,1 --json stages.json
"""

from __future__ import annotations

import argparse
import ctypes
import json

import numpy as np
import torch

from cutlass_kernels.table import layer_key

from ..ops import cuda
from ..ops.bits import pack_bits, words
from ..ops.graph import TConvConcat
from .timing import median_ms


def random_tconv(rng, mode: str, cin: int, cout: int) -> TConvConcat:
    """A transposed conv with random planes and thresholds near the middle of the accumulator range."""
    w = rng.integers(-1, 2, (cout, 2, 2, cin)) if mode == "masked" else rng.choice([-1, 1], (cout, 2, 2, cin))
    planes = [w > 0, w < 0] if mode == "masked" else [w > 0]
    packed = np.stack([pack_bits(p, (cin,)) for p in planes])
    spread = int(np.sqrt(cin)) + 1
    return TConvConcat("up", "src", skip="skip", mode=mode, cin_segments=(cin,), cout=cout, planes=packed,
                       theta=rng.integers(-spread, spread + 1, cout).astype(np.int32),
                       direction=rng.choice(np.array([-1, 1], np.int8), cout))


def random_words(shape, device) -> torch.Tensor:
    return torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32, device=device)


class Bench:
    def __init__(self, reps: int):
        self.dev = torch.device("cuda")
        self.lib = cuda.Library(cuda.device_cc())
        self.reps = reps
        self.rows: list[dict] = []
        self.stream = torch.cuda.current_stream().cuda_stream

    def add(self, stage, variant, batch, ms, *, tops=None, gbs=None, same=None):
        self.rows.append({"stage": stage, "variant": variant, "batch": batch, "ms": ms, "tops": tops, "gb_s": gbs,
                          "same_as_old": same})

    def first_conv(self, n, h, w):
        rng = np.random.default_rng(0)
        cout = 64
        weight = torch.from_numpy(rng.normal(0, 0.3, (cout, 3, 3, 3))).float().to(self.dev)
        scale = torch.from_numpy(rng.normal(0, 2, cout)).float().to(self.dev)
        shift = torch.from_numpy(rng.normal(0, 1, cout)).float().to(self.dev)
        out_old = torch.empty(n, h, w, 2, dtype=torch.int32, device=self.dev)
        out_new = torch.empty_like(out_old)
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(n, 3, h, w, device=self.dev).to(dtype)
            gb = (x.numel() * x.element_size() + out_new.numel() * 4) / 1e9
            if dtype == torch.float32:
                def old():
                    cuda._check(self.lib.lib.mbu_first_conv(x.data_ptr(), n, 3, h, w, 0.0, weight.data_ptr(),
                                                            scale.data_ptr(), shift.data_ptr(), 2, out_old.data_ptr(),
                                                            self.stream), "mbu_first_conv")
                ms = median_ms(old, self.reps, warmup=3)
                self.add("first_conv", "old f32 SIMT", n, ms, gbs=gb / ms * 1e3)

            def new():
                cuda._check(self.lib.lib.mbu_first_conv_tc(x.data_ptr(), int(dtype == torch.float16), n, 3, h, w,
                                                           0.0, weight.data_ptr(), scale.data_ptr(), shift.data_ptr(),
                                                           2, out_new.data_ptr(), self.stream), "mbu_first_conv_tc")
            ms = median_ms(new, self.reps, warmup=3)
            if dtype == torch.float32:
                old()
                # the two round differently: count words that differ (outputs within ~1e-6 of 0 may flip)
                same = f"{(out_old != out_new).float().mean().item():.2e} words differ"
            else:
                same = None
            self.add("first_conv", f"new {'f32' if dtype == torch.float32 else 'f16'} HMMA", n, ms,
                     gbs=gb / ms * 1e3, same=same)

    def tconv(self, name, n, h, w, cin, cout, mode):
        rng = np.random.default_rng(1)
        st = random_tconv(rng, mode, cin, cout)
        layer = cuda.BinaryLayer.prepare(st, "and", self.dev)
        x = random_words((n, h, w, words(cin)), self.dev)
        skip = words(cout)
        bufs = [torch.zeros(n, 2 * h, 2 * w, skip + words(cout), dtype=torch.int32, device=self.dev) for _ in range(2)]
        count = torch.empty(n, h, w, dtype=torch.int32, device=self.dev) if layer.counts else None
        args = [layer.args(x, b[..., skip:], count) for b in bufs]
        key = layer_key("and", 1, args[0].c_bits, args[0].k_cols, h, w)
        spec = self.lib.choose("and", args[0], key)
        fused = self.lib.conv_fn(spec)

        def counts():
            if count is not None:
                cuda._check(self.lib.lib.mbu_window_count(x.data_ptr(), n, h, w, words(cin), 1, count.data_ptr(),
                                                          self.stream), "count")

        def old():
            counts()
            cuda._check(fused(ctypes.byref(args[0]), self.stream), spec.name)

        def new():
            counts()
            cuda._check(self.lib.lib.mbu_tconv(ctypes.byref(args[1]), self.stream), "mbu_tconv")

        ops = 2 * n * h * w * args[0].k_cols * args[0].c_bits
        gb = (x.numel() * 4 + n * 4 * h * w * words(cout) * 4) / 1e9
        ms_old, ms_new = median_ms(old, self.reps, warmup=3), median_ms(new, self.reps, warmup=3)
        torch.cuda.synchronize()
        same = bool(torch.equal(bufs[0], bufs[1]))
        label = f"{name} {mode} {cin}->{cout} @{h}x{w}"
        self.add(label, f"old {spec.name}", n, ms_old, tops=ops / ms_old / 1e9, gbs=gb / ms_old * 1e3)
        self.add(label, "new mbu_tconv", n, ms_new, tops=ops / ms_new / 1e9, gbs=gb / ms_new * 1e3, same=same)

    def pool(self, name, n, h, w, channels):
        cw = words(channels)
        buf = random_words((n, h, w, 2 * cw), self.dev)  # the skip half of its concatenation buffer
        outs = [torch.empty(n, h // 2, w // 2, cw, dtype=torch.int32, device=self.dev) for _ in range(2)]
        fns = {"old mbu_max_pool": (self.lib.lib.mbu_max_pool, outs[0]),
               "new mbu_max_pool_vec": (self.lib.lib.mbu_max_pool_vec, outs[1])}
        gb = (n * h * w * cw * 4 + outs[0].numel() * 4) / 1e9
        for variant, (fn, out) in fns.items():
            ms = median_ms(lambda: cuda._check(fn(buf.data_ptr(), 2 * cw, 0, n, h, w, cw, out.data_ptr(),
                                                  self.stream), variant), self.reps, warmup=3)
            same = bool(torch.equal(outs[0], outs[1])) if variant.startswith("new") else None
            self.add(f"{name} {channels}ch @{h}x{w}", variant, n, ms, gbs=gb / ms * 1e3, same=same)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x960", help="padded input H x W (multiples of 16)")
    p.add_argument("--batch", default="64,1")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--only", default="first,tconv,pool", help="comma list of first, tconv, pool")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    H, W = (int(v) for v in args.size.split("x"))
    only = set(args.only.split(","))
    b = Bench(args.reps)
    for n in (int(v) for v in args.batch.split(",")):
        if "first" in only:
            b.first_conv(n, H, W)
        if "tconv" in only:
            for i, (cin, cout) in enumerate([(1024, 512), (512, 256), (256, 128), (128, 64)]):
                s = 2 ** (4 - i)
                for mode in ("masked", "binary"):
                    b.tconv(f"up_ct{i + 1}", n, H // s, W // s, cin, cout, mode)
        if "pool" in only:
            for i, c in enumerate([64, 128, 256, 512]):
                b.pool(f"down{i + 1}.pool", n, H >> i, W >> i, c)
        torch.cuda.empty_cache()
    print(f"\n{'stage':<40} {'variant':<45} {'batch':>5} {'ms':>9} {'TOPS':>8} {'GB/s':>8}  same")
    for r in b.rows:
        tops = f"{r['tops']:.0f}" if r["tops"] else "-"
        gbs = f"{r['gb_s']:.0f}" if r["gb_s"] else "-"
        print(f"{r['stage']:<40} {r['variant']:<45} {r['batch']:>5} {r['ms']:>9.4f} {tops:>8} {gbs:>8}  "
              f"{'' if r['same_as_old'] is None else r['same_as_old']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "size": args.size, "rows": b.rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
