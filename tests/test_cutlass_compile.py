"""The kernel generator: table -> cutlass_library -> C++ that nvcc compiles for sm_80 and sm_90a (no GPU needed)."""

import pytest

from cutlass_kernels.build import BuildError, compile_object, cutlass_include, find_nvcc, gencode, kernels_for
from cutlass_kernels.generate import emit_kernel, write_sources
from cutlass_kernels.table import KernelSpec, KernelTable, layer_key

ITERATOR_TAGS = {"analytic": "kAnalytic", "optimized": "kOptimized", "few_channels": "kFewChannels",
                 "fixed_channels": "kFixedChannels"}
SMALL = KernelSpec("and", (80, 90), (64, 64, 512), (2, 2, 1), 4, "analytic", 32)


def test_table_kernels_emit_distinct_cutlass_instances(tmp_path):
    table = KernelTable.load()
    paths = write_sources(tmp_path, table.kernels)
    assert len({p.name for p in paths}) == len(table.kernels)
    for spec, path in zip(table.kernels, paths):
        text = path.read_text()
        assert "cutlass::conv::kernel::DefaultConv2dFprop<" in text
        op = "OpAndPopc" if spec.encoding == "and" else "OpXorPopc"
        assert f"cutlass::arch::{op}" in text and f"mbu_bconv_{spec.name}(" in text
        tile = "cutlass::gemm::GemmShape<{}, {}, {}>".format(*spec.tile)
        assert tile in text and f"IteratorAlgorithm::{ITERATOR_TAGS[spec.iterator]}" in text


def test_xor_never_runs_on_hopper_and_unsupported_archs_are_refused():
    table = KernelTable.load()
    assert table.for_arch(90) and all(k.encoding == "and" for k in table.for_arch(90))
    assert {k.encoding for k in table.for_arch(86)} == {"and", "xor"}
    with pytest.raises(BuildError, match="no binary conv kernel in the table runs on sm_75"):
        kernels_for(75, table)
    assert gencode(90) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert layer_key("and", 3, 512, 1024, 80, 120) == "and_r3_c512_k1024_80x120"


def test_bad_table_entries_are_named():
    with pytest.raises(ValueError, match="tile"):
        KernelSpec("and", (80, 90), (64, 96, 512), (2, 2, 1), 4, "analytic", 32)
    with pytest.raises(ValueError, match="encoding 'nand'"):
        KernelSpec("nand", (80, 90), (64, 64, 512), (2, 2, 1), 4, "analytic", 32)


@pytest.mark.parametrize("cc", [80, 90])
def test_a_conv_kernel_compiles_for(cc, tmp_path):
    try:
        nvcc = find_nvcc()
    except BuildError as e:
        pytest.skip(f"nvcc is not installed here: {e}")
    src = tmp_path / "kernel.cu"
    src.write_text(emit_kernel(SMALL))
    obj = tmp_path / "kernel.o"
    compile_object(nvcc, src, obj, cc, cutlass_include())
    assert obj.stat().st_size > 10_000
