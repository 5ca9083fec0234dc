"""The hand-written stage kernels (first conv, transposed conv, pool, the K-packed 3x3 conv) compile for
sm_80 and sm_90a without spilling registers (no GPU needed; nvcc's resource report)."""

import re
import subprocess

import pytest

from cutlass_kernels.build import NVCC_FLAGS, SRC_DIR, BuildError, find_nvcc, gencode

# source -> its number of kernel entries where that is fixed (bconv_taps: 4 chunk widths x 2 tile shapes)
SOURCES = {"first_conv.cu": None, "tconv.cu": None, "pool.cu": None, "bconv_taps.cu": 8}


@pytest.mark.parametrize("cc", [80, 90])
@pytest.mark.parametrize("source", SOURCES)
def test_stage_kernel_compiles_without_spills(source, cc, tmp_path):
    try:
        nvcc = find_nvcc()
    except BuildError as e:
        pytest.skip(f"nvcc is not installed here: {e}")
    cmd = [nvcc, *NVCC_FLAGS, *gencode(cc), f"-I{SRC_DIR}", "-Xptxas", "-v", "-c", str(SRC_DIR / source),
           "-o", str(tmp_path / "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels = re.findall(r"Compiling entry function '([^']+)'", proc.stderr)
    assert kernels, proc.stderr[-2000:]
    if SOURCES[source] is not None:
        assert len(kernels) == SOURCES[source], proc.stderr[-2000:]
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
    assert len(spills) == len(kernels) and not any(spills), proc.stderr[-3000:]
