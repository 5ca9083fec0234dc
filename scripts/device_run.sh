#!/usr/bin/env bash
# Build, test and time the CUDA backend on the GPU machine in one call; logs and results go to $OUT.
# Carry (ignored paths): .cutlass (CUTLASS headers in include/, cutlass_library's .py in python/),
# .mbu_build (a library prebuilt by `LIGHTNING_MBU_CACHE=.mbu_build python -m cutlass_kernels.build --cc 90`),
# .whl (lightning, pytest wheels, where the machine lacks them). Extra arguments go to the benchmark.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mbu_device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUTLASS_INCLUDE=$PWD/.cutlass/include LIGHTNING_MBU_CACHE=$PWD/.mbu_build
export PYTHONPATH=$PWD:$PWD/.cutlass/python${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site || exit 1
fi

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$OUT/gpu.txt"
lib=$(python3 -m cutlass_kernels.build 2>&1 | tee "$OUT/build.log" | tail -1)
echo "library: $lib"
[ -f "$lib" ] || { echo "build failed"; exit 1; }
cuobjdump -sass "$lib" | grep -o 'BMMA\.[A-Z0-9.]*' | sort | uniq -c | tee "$OUT/sass.txt"

timeout 200 python3 -m pytest -q -rs tests/test_cuda_backend.py tests/test_cutlass_compile.py 2>&1 \
  | tee "$OUT/pytest.log" | tail -40
timeout 330 python3 -m lightning_mbu.bench.kernels --out "$OUT/benchmark.json" "$@" 2>&1 | tee "$OUT/bench.log"
