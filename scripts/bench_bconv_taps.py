"""GPU check and micro-benchmark of the K-packed 3x3 binary conv (cutlass_kernels/src/bconv_taps.cu).

Builds the kernel with nvcc into a shared library, checks its packed output bit for bit against the
CPU emulation of tests/test_bconv_taps.py (itself checked against the CPU engine) on odd sizes, then
times layer shapes with CUDA events (median). Binary TOPS = 2 * M * N * K, N = planes x C_out.
Usage: python3 scripts/bench_bconv_taps.py [out.json]
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_bconv_taps import emulate  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class Args(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int) for f in ("n", "h", "w", "c_bits", "k_cols", "r", "s", "pad", "planes", "alpha")] + [
        (f, ctypes.c_void_p) for f in ("row_count", "act", "filt", "thr", "out")] + [
        ("out_pixel_stride", ctypes.c_int64), ("out_word_offset", ctypes.c_int), ("out_words", ctypes.c_int),
        ("scatter", ctypes.c_int)]


def build() -> ctypes.CDLL:
    so = os.path.join(tempfile.mkdtemp(), "bconv_taps.so")
    cap = torch.cuda.get_device_capability()
    arch = "90a" if cap == (9, 0) else f"{cap[0]}{cap[1]}"
    subprocess.run(["nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC",
                    f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o", so,
                    os.path.join(ROOT, "cutlass_kernels/src/bconv_taps.cu")], check=True)
    lib = ctypes.CDLL(so)
    lib.mbu_bconv_taps.argtypes = [ctypes.POINTER(Args), ctypes.c_void_p]
    return lib


def problem(n, h, w, cin, cout, planes, rng):
    cw = cin // 32
    x = torch.from_numpy(rng.integers(0, 2**32, (n, h, w, cw), dtype=np.uint32).view(np.int32))
    filt = torch.from_numpy(rng.integers(0, 2**32, (planes * cout, 9 * cw), dtype=np.uint32).view(np.int32))
    if planes == 2:  # b+ and b- disjoint, as the format requires
        f = filt.view(-1, 2, 32, 9 * cw)
        f[:, 1] &= ~f[:, 0]
    d = torch.from_numpy(rng.choice([-1, 1], cout).astype(np.int32))
    thr = torch.from_numpy(rng.integers(-40, 40, cout).astype(np.int32))
    pairs = torch.stack([d * thr, d], 1).contiguous()
    count = torch.from_numpy(rng.integers(0, 9 * cin, n * h * w).astype(np.int32)) if planes == 1 else None
    return x, filt, pairs, count


def launch(lib, x, filt, pairs, count, out, planes, stream):
    n, h, w, cw = x.shape
    a = Args(n=n, h=h, w=w, c_bits=32 * cw, k_cols=filt.shape[0], r=3, s=3, pad=1, planes=planes,
             alpha=1 if planes == 2 else 2, row_count=count.data_ptr() if count is not None else None,
             act=x.data_ptr(), filt=filt.data_ptr(), thr=pairs.data_ptr(), out=out.data_ptr(),
             out_pixel_stride=out.shape[-1], out_word_offset=0, out_words=filt.shape[0] // (32 * planes), scatter=0)
    err = lib.mbu_bconv_taps(ctypes.byref(a), ctypes.c_void_p(stream))
    if err:
        raise RuntimeError(f"mbu_bconv_taps returned {err}")


def check(lib, n, h, w, cin, cout, planes, rng):
    x, filt, pairs, count = problem(n, h, w, cin, cout, planes, rng)
    r = emulate(x.numpy(), filt.numpy(), planes, 1 if planes == 2 else 2, None if count is None else count.numpy())
    bits = pairs[:, 1].numpy() * r >= pairs[:, 0].numpy()
    want = np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little").view("<u4").view(np.int32)
    g = [t.cuda() if t is not None else None for t in (x, filt, pairs, count)]
    out = torch.full((n * h * w, cout // 32), 0x5A5A5A5A, dtype=torch.int32, device="cuda")  # poisoned
    launch(lib, *g, out, planes, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    ok = bool((out.cpu().numpy() == want.reshape(out.shape)).all())
    print(f"check n={n} {h}x{w} cin={cin} cout={cout} planes={planes}: {'bit-exact' if ok else 'MISMATCH'}")
    return ok


def bench(lib, n, h, w, cin, cout, planes, rng, reps=20):
    x, filt, pairs, count = [t.cuda() if t is not None else None for t in problem(n, h, w, cin, cout, planes, rng)]
    out = torch.empty((n * h * w, cout // 32), dtype=torch.int32, device="cuda")
    s = torch.cuda.current_stream().cuda_stream
    for _ in range(3):
        launch(lib, x, filt, pairs, count, out, planes, s)
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        launch(lib, x, filt, pairs, count, out, planes, s)
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    ms = float(np.median(times))
    tops = 2 * n * h * w * planes * cout * 9 * cin / (ms * 1e-3) / 1e12
    print(f"bench n={n} {h}x{w} {cin}->{cout} planes={planes}: {ms:.3f} ms, {tops:.0f} binary TOPS")
    return {"n": n, "h": h, "w": w, "cin": cin, "cout": cout, "planes": planes, "ms": ms, "tops": tops}


def main():
    rng = np.random.default_rng()
    lib = build()
    ok = all([check(lib, 3, 97, 131, 64, 64, 2, rng), check(lib, 1, 97, 131, 64, 64, 1, rng),
              check(lib, 1, 33, 17, 128, 96, 2, rng), check(lib, 3, 15, 9, 256, 32, 1, rng)])
    res = {"device": torch.cuda.get_device_name(), "bit_exact": ok, "bench": [
        bench(lib, 64, 640, 960, 64, 64, 2, rng), bench(lib, 64, 640, 960, 64, 64, 1, rng),
        bench(lib, 1, 640, 960, 64, 64, 2, rng), bench(lib, 64, 80, 120, 512, 512, 1, rng),
        bench(lib, 64, 40, 60, 1024, 1024, 2, rng)]}
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
