#!/usr/bin/env bash
# The 2-GPU check of issue 9, in one call on a machine with two GPUs (e.g. nvidia-h100-x2):
#   1. the same training on 1 GPU (batch 8) and on 2 GPUs with DDP (batch 4 per GPU, synced
#      batch norm: the same global batch), DSB2018 at 256x256 -> time per epoch, test metrics;
#   2. the same search budget with 1 worker and with 2 workers (one per GPU) -> trials per hour.
# Usage: examples/scale_out_check.sh [DATA_ROOT] [OUT]   (results: OUT/scale_out.json)
set -euo pipefail
data="${1:-/work/shared/data/dsb2018}"
out="${2:-${OUT:-scale_out}}"
epochs="${EPOCHS:-10}"
budget="${BUDGET:-16}"
mkdir -p "$out"
gpus="$(python3 -c 'import torch; print(torch.cuda.device_count())')"
[[ "$gpus" -ge 2 ]] || { echo "needs 2 GPUs, found $gpus" >&2; exit 1; }

train() {  # $1 = name, then flags
    local name="$1"; shift
    lightning-mbu train --data "$data" --layout dsb2018 --size 256 --base 32 --max-epochs "$epochs" \
        --config BBBBMMMMBBBB --lr 1e-3 --accelerator gpu --num-workers 4 --no-progress-bar --logger csv \
        --default-root-dir "$out/$name" --output "$out/$name.json" "$@"
}
train gpu1 --devices 1 --batch-size 8
train gpu2 --devices 2 --strategy ddp --sync-batchnorm --batch-size 4

search() {  # $1 = workers
    lightning-mbu search --data "$data" --layout dsb2018 --size 128x128 --base 16 --epochs-per-trial 4 \
        --train-batches 20 --budget "$budget" --workers "$1" --accelerator gpu --no-prune \
        --out "$out/search_w$1"
}
search 1
search 2

python3 - "$out" "$epochs" <<'EOF'
import json, sys
from pathlib import Path
out, epochs = Path(sys.argv[1]), int(sys.argv[2])
report = {}
for name in ("gpu1", "gpu2"):
    r = json.loads((out / f"{name}.json").read_text())
    report[name] = {"seconds_per_epoch": r["fit_seconds"] / epochs, "best_val_dice": r["best_val_dice"], **r["test"]}
for w in (1, 2):
    s = json.loads((out / f"search_w{w}" / "summary.json").read_text())
    report[f"search_workers{w}"] = {"finished": s["finished"], "budget": s["budget"],
                                    "wall_seconds": s["wall_seconds"],
                                    "trials_per_hour": s["finished"] / s["wall_seconds"] * 3600}
(out / "scale_out.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
EOF
