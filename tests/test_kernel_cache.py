"""A deployed machine loads a cached or prebuilt kernel library without nvcc or the CUTLASS headers."""

import subprocess

import pytest

from cutlass_kernels import build


@pytest.fixture
def no_toolchain(monkeypatch, tmp_path):
    """No nvcc anywhere, no CUTLASS headers, and any compiler call fails the test."""
    monkeypatch.setenv("LIGHTNING_MBU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv(build.PREBUILT_ENV, raising=False)
    monkeypatch.setenv("CUTLASS_INCLUDE", str(tmp_path / "no-cutlass"))

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the cache lookup ran a program: {args[0] if args else kwargs}")
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(build.subprocess, "run", forbidden)
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.find_nvcc()
    return tmp_path


def _fake_library(folder):
    folder.mkdir(parents=True)
    lib = folder / build.LIBRARY_NAME
    lib.write_bytes(b"\x7fELF fake")
    return lib


@pytest.mark.parametrize("cc", [80, 90])
def test_a_cached_library_is_found_without_nvcc_or_headers(no_toolchain, cc):
    lib = _fake_library(build.library_dir(cc))
    assert build.library_dir(cc).parent == no_toolchain / "cache"
    assert build.build(cc) == lib


def test_the_cache_key_follows_the_sources_that_ship_with_the_package(no_toolchain, monkeypatch):
    """A changed kernel source (or table, or flags) is a different folder: a stale build is never loaded."""
    before = build.library_dir(80)
    _fake_library(before)
    assert build.library_dir(80) != build.library_dir(90)
    monkeypatch.setattr(build, "NVCC_FLAGS", [*build.NVCC_FLAGS, "-lineinfo"])
    assert build.library_dir(80) != before
    with pytest.raises(build.BuildError, match="nvcc not found"):  # nothing cached for these sources: build
        build.build(80)


def test_a_prebuilt_library_path_is_used_as_given(no_toolchain, monkeypatch):
    lib = _fake_library(no_toolchain / "prebuilt")
    monkeypatch.setenv(build.PREBUILT_ENV, str(lib))
    assert build.build(90) == lib
    monkeypatch.setenv(build.PREBUILT_ENV, str(no_toolchain / "missing.so"))
    with pytest.raises(build.BuildError, match=rf"{build.PREBUILT_ENV}=.*missing\.so.*does not exist"):
        build.build(90)


def test_a_library_without_this_packages_kernels_is_refused_by_name(no_toolchain, monkeypatch):
    import shutil

    gcc = shutil.which("gcc", path="/usr/bin:/bin")
    if gcc is None:
        pytest.skip("needs gcc to build a small shared library")
    src, lib = no_toolchain / "other.c", no_toolchain / "libother.so"
    src.write_text("int mbu_max_pool(void) { return 0; }\n")
    monkeypatch.undo()  # the compiler may run now: this builds the stand-in library, not the kernels
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    monkeypatch.setenv(build.PREBUILT_ENV, str(lib))
    build.load_library.cache_clear()
    with pytest.raises(build.BuildError, match=r"libother\.so lacks \d+ kernel\(s\) .* for sm_80 .*rebuild"):
        build.load_library(80)
    (no_toolchain / "junk.so").write_bytes(b"not a library")
    monkeypatch.setenv(build.PREBUILT_ENV, str(no_toolchain / "junk.so"))
    build.load_library.cache_clear()
    with pytest.raises(build.BuildError, match=r"junk\.so: cannot load the kernel library"):
        build.load_library(80)
