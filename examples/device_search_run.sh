#!/usr/bin/env bash
# On a GPU machine (issue 14): `lightning-mbu search --budget 50` at 512x512, base 64, every trial a short fine-tune
# from .gpu/teacher.ckpt distilled from it, 4 worker processes sharing the GPU. Without that checkpoint (files in
# ignored folders did not survive between two device calls) it first trains the full-precision teacher
# (10 epochs: ~81 s of fitting on an H200).
set -o pipefail
OUT=${OUT:-out}; DATA=${DATA:-.dcache/dsb2018-512}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then  # packages the GPU image lacks
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
start=$(date +%s)
if [ ! -f .gpu/teacher.ckpt ]; then
    python3 -m lightning_mbu train --data "$DATA" --config fp --optimizer adam --lr 1e-3 --lr-schedule cosine \
        --max-epochs "${TEACHER_EPOCHS:-10}" --precision "${PRECISION:-bf16-mixed}" --num-workers 10 --no-progress-bar \
        --default-root-dir .gpu/teacher 2>&1 | grep -v -i -E "warn|tip:|litlogger" | tail -4 | tee "$OUT/teacher.log"
    mkdir -p .gpu && cp "$(ls .gpu/teacher/lightning_logs/fp/version_0/checkpoints/best-*.ckpt | head -1)" .gpu/teacher.ckpt
fi
timeout "${SEARCH_LIMIT:-480}" python3 -m lightning_mbu search --budget 50 --data "$DATA" --size "${SIZE:-512}" \
    --teacher .gpu/teacher.ckpt --workers-per-gpu "${WORKERS_PER_GPU:-4}" --precision "${PRECISION:-bf16-mixed}" --accelerator "${ACCEL:-gpu}" \
    --epochs-per-trial 2 --train-batches "${TRAIN_BATCHES:-40}" --batch-size 4 --num-workers 2 --out .gpu/search $EXTRA \
    2>&1 | grep -v -i -E "warn|tip:|litlogger" | tee "$OUT/search.log"
echo "search: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s of wall time" | tee -a "$OUT/search.log"
cp .gpu/search/summary.json .gpu/search/pareto.png .gpu/search/shapley.png .gpu/search/trials.csv "$OUT/"
