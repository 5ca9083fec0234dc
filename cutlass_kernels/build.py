"""Build the MBU CUDA kernels for the GPU at hand into a cached shared library.

The library is plain CUDA C++ (CUTLASS instances from generate.py plus the hand-written
``src/*.cu``) with a C interface (``src/mbu_api.h``), loaded through ctypes: it links no torch
symbols, so one build serves any torch version and can be made ahead on a machine without a
GPU (``python -m cutlass_kernels.build --cc 90``). Builds are cached under
``$LIGHTNING_MBU_CACHE`` (default ``~/.cache/lightning_mbu``) in a folder keyed by the compute
capability and a hash of what ships with the package (every source, the kernel table, the flags),
so a deployed machine finds its library without nvcc or the CUTLASS headers; the toolchain that
built it is recorded in the folder's ``toolchain.txt`` (delete the folder to rebuild after
changing CUDA or CUTLASS). ``$LIGHTNING_MBU_KERNELS`` names a prebuilt library to load instead.
CUTLASS's headers come from ``$CUTLASS_INCLUDE`` or the installed ``nvidia-cutlass`` package.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from .generate import emit_kernel
from .table import KernelSpec, KernelTable

SRC_DIR = Path(__file__).with_name("src")
NVCC_FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]
#: hand-written sources compiled next to the generated kernels
HAND_WRITTEN = ("bitops.cu", "first_conv.cu", "tconv.cu", "pool.cu", "bconv_taps.cu")
LIBRARY_NAME = "libmbu_kernels.so"
#: a prebuilt kernel library to load instead of the cache (e.g. shipped in a deployment image)
PREBUILT_ENV = "LIGHTNING_MBU_KERNELS"


class BuildError(RuntimeError):
    """The kernels cannot be built or loaded here (no GPU, no nvcc, unsupported arch, compile error)."""


def cutlass_include() -> Path:
    env = os.environ.get("CUTLASS_INCLUDE")
    if env:
        path = Path(env)
    else:
        try:
            import cutlass_library
        except ImportError:
            raise BuildError("CUTLASS headers not found: set CUTLASS_INCLUDE to CUTLASS's include folder "
                             "or pip install nvidia-cutlass") from None
        path = Path(cutlass_library.__file__).parent / "source" / "include"
    if not (path / "cutlass" / "cutlass.h").is_file():
        raise BuildError(f"CUTLASS headers not found: {path}/cutlass/cutlass.h does not exist (CUTLASS_INCLUDE?)")
    return path


def find_nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [str(Path(home) / "bin" / "nvcc")] if home else []
    candidates.append(shutil.which("nvcc") or "")
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise BuildError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")


def device_cc(device=None) -> int:
    """Compute capability of a torch CUDA device (default: the current one) as major * 10 + minor."""
    import torch

    if not torch.cuda.is_available():
        raise BuildError("the cuda backend needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def gencode(cc: int) -> list[str]:
    """nvcc target flags; sm_90 is built as sm_90a (the arch-specific target Hopper kernels want)."""
    arch = f"{cc}a" if cc == 90 else str(cc)
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def kernels_for(cc: int, table: KernelTable | None = None) -> list[KernelSpec]:
    table = table or KernelTable.load()
    specs = table.for_arch(cc)
    if not specs:
        supported = sorted({c for k in table.kernels for c in range(k.cc[0], k.cc[1] + 1)})
        raise BuildError(f"no binary conv kernel in the table runs on sm_{cc}; supported: sm_{supported[0]} to "
                         f"sm_{supported[-1]} (b1 mma.sync needs sm_80+; XOR only up to sm_89)")
    return specs


def compile_object(nvcc: str, src: Path, obj: Path, cc: int, include: Path, extra=()) -> None:
    cmd = [nvcc, *NVCC_FLAGS, *gencode(cc), f"-I{include}", f"-I{SRC_DIR}", *extra, "-c", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"nvcc failed on {src.name}:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]


def build_key(cc: int, sources: dict[str, str]) -> str:
    """The cache folder's name, from files that ship with the package only (no nvcc, no headers needed)."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    for p in sorted(SRC_DIR.iterdir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(" ".join(NVCC_FLAGS + gencode(cc)).encode())
    return f"sm{cc}-{h.hexdigest()[:16]}"


def cache_root() -> Path:
    return Path(os.environ.get("LIGHTNING_MBU_CACHE") or Path.home() / ".cache" / "lightning_mbu")


def _generated(specs) -> dict[str, str]:
    return {f"bconv_{s.name}.cu": emit_kernel(s) for s in specs}


def library_dir(cc: int) -> Path:
    """Where the library for ``cc`` and this package's sources is (or would be) cached."""
    return cache_root() / build_key(cc, _generated(kernels_for(cc)))


def build(cc: int, jobs: int | None = None, verbose: bool = False) -> Path:
    """The path of the kernel library for compute capability ``cc``: ``$LIGHTNING_MBU_KERNELS``, else the
    cached build, else a new build (only this needs nvcc and the CUTLASS headers)."""
    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt:
        if not Path(prebuilt).is_file():
            raise BuildError(f"{PREBUILT_ENV}={prebuilt}: the file does not exist")
        return Path(prebuilt)
    specs = kernels_for(cc)
    generated = _generated(specs)
    out_dir = cache_root() / build_key(cc, generated)
    lib = out_dir / LIBRARY_NAME
    if lib.is_file():
        return lib
    nvcc, include = find_nvcc(), cutlass_include()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        jobs_src = []
        for name, text in generated.items():
            (work / name).write_text(text)
            jobs_src.append(work / name)
        jobs_src += [SRC_DIR / n for n in HAND_WRITTEN]
        objs = [work / (p.stem + ".o") for p in jobs_src]
        with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            futures = [pool.submit(compile_object, nvcc, s, o, cc, include) for s, o in zip(jobs_src, objs)]
            for s, f in zip(jobs_src, futures):
                f.result()
                if verbose:
                    print(f"compiled {s.name}", flush=True)
        link = [nvcc, "-shared", *gencode(cc), "-o", str(work / lib.name), *map(str, objs)]
        proc = subprocess.run(link, capture_output=True, text=True)
        if proc.returncode:
            raise BuildError(f"linking {lib.name} failed:\n{proc.stderr[-4000:]}")
        (work / "kernels.txt").write_text("\n".join(s.name for s in specs) + "\n")
        (work / "toolchain.txt").write_text(f"nvcc: {_nvcc_version(nvcc)}\ncutlass headers: {include}\n")
        for obj in objs:  # keep the sources and the library only
            obj.unlink()
        try:
            work.rename(out_dir)  # atomic: a concurrent build of the same key wins or loses whole
        except OSError:
            if not lib.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


@lru_cache(maxsize=None)
def load_library(cc: int | None = None) -> tuple[ctypes.CDLL, tuple[KernelSpec, ...]]:
    """The loaded kernel library for ``cc`` (default: the current GPU) and the kernels it holds."""
    cc = cc if cc is not None else device_cc()
    path, specs = build(cc), tuple(kernels_for(cc))
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BuildError(f"{path}: cannot load the kernel library: {e}") from None
    missing = [s.name for s in specs if not hasattr(lib, f"mbu_bconv_{s.name}")]
    if missing:  # a prebuilt library from other sources or another kernel table
        raise BuildError(f"{path} lacks {len(missing)} kernel(s) this package needs for sm_{cc} (e.g. "
                         f"mbu_bconv_{missing[0]}): it was built from other sources; rebuild it")
    return lib, specs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Build (or find cached) the MBU CUDA kernel library.")
    p.add_argument("--cc", type=int, default=None, help="compute capability, e.g. 90 (default: the current GPU)")
    p.add_argument("--jobs", type=int, default=None)
    args = p.parse_args(argv)
    try:
        print(build(args.cc if args.cc is not None else device_cc(), args.jobs, verbose=True))
    except BuildError as e:
        print(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
