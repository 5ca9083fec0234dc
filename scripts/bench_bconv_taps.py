"""Micro-benchmark of the K-packed 3x3 binary conv (cutlass_kernels/src/bconv_taps.cu) on the layer shapes
of the base-64 MBU-Net at 640x960 (a 640x959 image padded to a multiple of 16).

Times every 3x3 conv of the net as a binary layer (1 plane, window count formed in the kernel) and as
a masked one (2 planes in one GEMM), at each batch size, with CUDA events (median of --reps launches
after 3 warm-ups) on random inputs generated on the GPU. Binary TOPS = 2 N H W Cout Cin 9 x planes over
the median time (the b1 AND-popc mma.sync peak of an H100/H200 is about 10,300). With --tiles, a few
shapes are also run with each tile shape forced (MBU_TAPS_TILE builds) and their outputs must equal
the default dispatch's, bit for bit, at full size. With --cutlass LIB (a built kernel library,
cutlass_kernels.build), each shape also runs the CUTLASS implicit-GEMM path it replaces (the window
count pass, then the kernel the table picks among those that accept the shape) on the same inputs:
its time is the "before" column, and its output must equal the new kernel's bit for bit.
Bit-exactness against the CPU engine is tests/test_bconv_taps.py (pytest -m gpu).
Usage: python3 scripts/bench_bconv_taps.py [--batches 64,1] [--tiles] [--cutlass LIB] [--json out.json]
"""

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from test_bconv_taps import build_kernel  # noqa: E402

from cutlass_kernels.table import KernelTable, layer_key  # noqa: E402
from lightning_mbu.ops.cuda import ConvArgs  # noqa: E402

#: (layer, H, W, Cin, Cout) of the base-64 net at 640x960
LAYERS = [("inc.conv2", 640, 960, 64, 64), ("down1.conv1", 320, 480, 64, 128), ("down1.conv2", 320, 480, 128, 128),
          ("down2.conv1", 160, 240, 128, 256), ("down2.conv2", 160, 240, 256, 256),
          ("down3.conv1", 80, 120, 256, 512), ("down3.conv2", 80, 120, 512, 512),
          ("down4.conv1", 40, 60, 512, 1024), ("down4.conv2", 40, 60, 1024, 1024),
          ("up1.conv1", 80, 120, 1024, 512), ("up1.conv2", 80, 120, 512, 512),
          ("up2.conv1", 160, 240, 512, 256), ("up2.conv2", 160, 240, 256, 256),
          ("up3.conv1", 320, 480, 256, 128), ("up3.conv2", 320, 480, 128, 128),
          ("up4.conv1", 640, 960, 128, 64), ("up4.conv2", 640, 960, 64, 64)]
TILES = {1: "256x64", 2: "128x128", 3: "64x256", 4: "256x128"}
TILE_SHAPES = ["inc.conv2", "down1.conv2", "down3.conv2", "down4.conv2", "up1.conv1", "up4.conv1"]


def problem(n, h, w, cin, cout, planes):
    """Random device tensors of one layer: input words, filter (K-packed columns), (d * thr, d) pairs, output."""
    cw, ow = cin // 32, cout // 32
    x = torch.randint(-2**31, 2**31 - 1, (n, h, w, cw), dtype=torch.int32, device="cuda")
    filt = torch.randint(-2**31, 2**31 - 1, (planes * cout, 9 * cw), dtype=torch.int32, device="cuda")
    if planes == 2:  # b+ and b- disjoint, as the format requires
        f = filt.view(-1, 2, 32, 9 * cw)
        f[:, 1] &= ~f[:, 0]
    d = torch.randint(0, 2, (cout,), dtype=torch.int32, device="cuda") * 2 - 1
    thr = torch.randint(-40, 40, (cout,), dtype=torch.int32, device="cuda")
    pairs = torch.stack([d * thr, d], 1).contiguous()
    out = torch.empty(n, h, w, ow, dtype=torch.int32, device="cuda")
    args = ConvArgs(n=n, h=h, w=w, c_bits=cin, k_cols=planes * cout, r=3, s=3, pad=1, planes=planes,
                    alpha=1 if planes == 2 else 2, row_count=None, act=x.data_ptr(), filt=filt.data_ptr(),
                    thr=pairs.data_ptr(), out=out.data_ptr(), out_pixel_stride=ow, out_word_offset=0, out_words=ow,
                    scatter=0)
    return (x, filt, pairs, out), args


def launcher(lib, args, planes):
    fn = lib.mbu_bconv_taps_counted if planes == 1 else lib.mbu_bconv_taps
    ptr, stream = ctypes.addressof(args), torch.cuda.current_stream().cuda_stream

    def launch():
        err = fn(ptr, stream)
        if err:
            raise RuntimeError(f"bconv_taps returned {err}")
    return launch


class Cutlass:
    """The CUTLASS path of a built kernel library: window count (binary AND form) + the table's kernel."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.table = KernelTable.load()
        self.names = [s.name for s in self.table.for_arch(90) if s.encoding == "and"
                      and hasattr(self.lib, f"mbu_bconv_{s.name}")]
        self.lib.mbu_window_count.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 5, ctypes.c_void_p, ctypes.c_void_p]

    def launcher(self, args, x, planes):
        ptr, stream = ctypes.addressof(args), torch.cuda.current_stream().cuda_stream
        accepts = [n for n in self.names if getattr(self.lib, f"mbu_bconv_{n}_check")(ctypes.c_void_p(ptr)) == 0]
        if not accepts:
            return None, None
        key = layer_key("and", 3, args.c_bits, args.k_cols, args.h, args.w)
        name = self.table.choice(90, key)
        name = name if name in accepts else accepts[0]
        conv = getattr(self.lib, f"mbu_bconv_{name}")
        conv.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        count = torch.empty(x.shape[:3], dtype=torch.int32, device="cuda") if planes == 1 else None

        def launch():
            if count is not None:
                args.row_count = count.data_ptr()
                err = self.lib.mbu_window_count(x.data_ptr(), *x.shape, 3, count.data_ptr(), stream)
                if err:
                    raise RuntimeError(f"mbu_window_count returned {err}")
            err = conv(ptr, stream)
            args.row_count = None
            if err:
                raise RuntimeError(f"{name} returned {err}")
        return launch, name


def time_ms(launch, reps):
    for _ in range(3):
        launch()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for e0, e1 in events:
        e0.record()
        launch()
        e1.record()
    torch.cuda.synchronize()
    return float(np.median([e0.elapsed_time(e1) for e0, e1 in events]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tiles", action="store_true", help="also time forced tile shapes on a few layers")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--cutlass", help="a built kernel library whose CUTLASS path to time as the baseline")
    ap.add_argument("--lib-dir", help="where the built libraries are kept (default: a temporary folder)")
    opt = ap.parse_args(argv)
    lib_dir = Path(opt.lib_dir or tempfile.mkdtemp())
    lib_dir.mkdir(parents=True, exist_ok=True)
    lib = build_kernel(lib_dir)
    forced = {t: build_kernel(lib_dir, (f"MBU_TAPS_TILE={t}",)) for t in TILES} if opt.tiles else {}
    cutlass = Cutlass(opt.cutlass) if opt.cutlass else None
    rows, tile_rows = [], []
    for n in (int(b) for b in opt.batches.split(",")):
        for name, h, w, cin, cout in LAYERS:
            for planes in (1, 2):
                tensors, args = problem(n, h, w, cin, cout, planes)
                ms = time_ms(launcher(lib, args, planes), opt.reps)
                ops = 2 * n * h * w * cout * cin * 9 * planes
                row = {"layer": name, "batch": n, "h": h, "w": w, "cin": cin, "cout": cout, "planes": planes,
                       "ms": ms, "tops": ops / (ms * 1e-3) / 1e12}
                if cutlass:
                    launch, kernel = cutlass.launcher(args, tensors[0], planes)
                    if launch:
                        want = tensors[3].clone()
                        tensors[3].fill_(0x5A5A5A5A)
                        row["cutlass_kernel"] = kernel
                        row["cutlass_ms"] = time_ms(launch, max(3, opt.reps // 2))
                        row["cutlass_equal"] = bool(torch.equal(tensors[3], want))
                rows.append(row)
                if forced and name in TILE_SHAPES:
                    want = tensors[3].clone()
                    for t, flib in forced.items():
                        tensors[3].fill_(0x5A5A5A5A)
                        tms = time_ms(launcher(flib, args, planes), opt.reps)
                        same = bool(torch.equal(tensors[3], want))
                        tile_rows.append({"layer": name, "batch": n, "planes": planes, "tile": TILES[t], "ms": tms,
                                          "tops": ops / (tms * 1e-3) / 1e12, "equal_to_default": same})
                del tensors
                torch.cuda.empty_cache()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows, "tiles": tile_rows}
    if opt.json:
        Path(opt.json).write_text(json.dumps(res, indent=1))
    if tile_rows:
        print("\nforced tiles (ms / TOPS, equal to the default's output)")
        for r in tile_rows:
            print(f"  {r['layer']:<12} N={r['batch']:<3} P={r['planes']} {r['tile']:>8}: {r['ms']:8.3f} ms "
                  f"{r['tops']:7.0f} TOPS  {'equal' if r['equal_to_default'] else 'DIFFERENT'}")
    print(f"\n{res['device']}: K-packed 3x3 binary conv, default tiles: ms, binary TOPS"
          + (" [CUTLASS path ms, output equal]" if cutlass else ""))
    for r in rows:
        base = f" [{r['cutlass_ms']:8.3f} {'eq' if r['cutlass_equal'] else 'DIFF'}]" if "cutlass_ms" in r else ""
        print(f"{r['layer']:<12} N={r['batch']:<3} {r['h']:>3}x{r['w']:<3} {r['cin']:>4}->{r['cout']:<4} "
              f"P={r['planes']} {r['ms']:8.3f} ms {r['tops']:6.0f} TOPS{base}")
    for n in sorted({r["batch"] for r in rows}, reverse=True):
        for planes in (1, 2):
            sel = [r for r in rows if r["batch"] == n and r["planes"] == planes]
            base = sum(r.get("cutlass_ms", 0.0) for r in sel)
            print(f"sum N={n} P={planes}: {sum(r['ms'] for r in sel):.3f} ms" + (f" (CUTLASS {base:.3f})" if base else ""))
    bad = [r for r in tile_rows if not r["equal_to_default"]] + [r for r in rows if r.get("cutlass_equal") is False]
    if bad:
        sys.exit(f"outputs disagree: {bad}")


if __name__ == "__main__":
    main()
