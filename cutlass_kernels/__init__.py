"""Binary tensor-core kernels for packed MBU-Nets: a kernel table (kernels.json, table.py), a generator that
emits CUTLASS instances through cutlass_library (generate.py), hand-written CUDA pieces (src/) and a cached
build (build.py). A leaf: it imports nothing from lightning_mbu. The runtime that uses it is
lightning_mbu.ops.cuda; its tuning benchmarks are lightning_mbu.bench.kernels and lightning_mbu.bench.stages."""
