#!/usr/bin/env bash
# On a GPU machine, from the repository root (issue 14): the README's real-data command as written (an automatic
# full-precision teacher, then BBBBMMMMBBBB distilled from it), then float32 evaluation of both nets on the seeded
# test split, export, and the packed model on the CUDA backend against its PyTorch net (differing pixels).
# Wheels in .whl/ (albumentations, optuna and their needs), the data cache in $DATA, and a prebuilt kernel
# library under .mbu_build/ travel with the call; results go to $OUT, checkpoints to .gpu/ (kept for the search).
set -o pipefail
OUT=${OUT:-out}; DATA=${DATA:-.dcache/dsb2018-512}; RUN=.gpu/readme
mkdir -p "$OUT" .gpu
if ls .whl/*.whl > /dev/null 2>&1; then  # packages the GPU image lacks
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# cutlass_library (nvidia-cutlass's Python part, copied to .dcache/cutlass_py) names the kernels the library holds
export PYTHONPATH=/tmp/site:$PWD:$PWD/.dcache/cutlass_py PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
# the kernel library built here for these sources (.gpu_kernels/<key>/); should the sources have changed
# since, the carried library is loaded as it is (its kernels are checked by name when it loads)
export LIGHTNING_MBU_CACHE=$PWD/.gpu_kernels
python3 -c "import sys; from cutlass_kernels.build import library_dir; sys.exit(not (library_dir(90) / 'libmbu_kernels.so').is_file())" \
    || export LIGHTNING_MBU_KERNELS=$(ls "$PWD"/.gpu_kernels/*/libmbu_kernels.so | head -1)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
start=$(date +%s)
timeout "${TRAIN_LIMIT:-470}" python3 -m lightning_mbu train --data "$DATA" \
    --optimizer adam --lr 1e-3 --lr-schedule cosine --max-epochs "${EPOCHS:-20}" --teacher-epochs "${TEACHER_EPOCHS:-10}" \
    --precision "${PRECISION:-bf16-mixed}" --num-workers 10 --no-progress-bar --default-root-dir "$RUN" \
    --output "$RUN/results.json" $EXTRA \
    2>&1 | grep -v -i -E "warn|tip:|litlogger" | tee "$OUT/train.log"
echo "train: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s of wall time" | tee -a "$OUT/train.log"
cp "$RUN/results.json" "$OUT/train_results.json"
teacher=$(ls "$RUN"/lightning_logs/fp/version_0/checkpoints/best-*.ckpt | head -1)
cp "$teacher" .gpu/teacher.ckpt
best=$(ls "$RUN"/lightning_logs/BBBBMMMMBBBB/version_0/checkpoints/best-*.ckpt | head -1)
if [ -z "$SKIP_EVAL" ]; then  # float32 evaluation of both nets (train tested them in its own precision)
    for pair in "mbu:$best" "fp:.gpu/teacher.ckpt"; do
        python3 -m lightning_mbu eval "${pair#*:}" --split test val --accelerator "${ACCEL:-gpu}" --no-progress-bar \
            --output "$OUT/eval_${pair%%:*}.json" 2>&1 | grep -v -i warn | tail -4
    done
fi
python3 -m lightning_mbu export "$best" -o .gpu/mbu.mbu 2>&1 | tail -1
python3 examples/engine_check.py "$best" .gpu/mbu.mbu --data "$DATA" --backend "${BACKEND:-cuda}" --output "$OUT/engine_check.json" \
    2>&1 | grep -v differing_by_image | tail -12
echo "call: $(( $(date +%s) - start )) s"
