"""Binary tensor-core kernels for packed MBU-Nets: a kernel table (kernels.json, table.py), a generator that
emits CUTLASS instances through cutlass_library (generate.py), hand-written CUDA pieces (src/), a cached
build (build.py) and the tuning benchmark (benchmark.py). The runtime that uses them is lightning_mbu.ops.cuda."""
