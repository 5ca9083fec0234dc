"""The exported model on a packed backend against its PyTorch checkpoint, on the seeded test split.

    python examples/engine_check.py CKPT MODEL.mbu --data .dcache/dsb2018-512 --backend cuda --output check.json

Both sides take the same uint8 pixels through the same preprocessing (``predict.load_model``), so
any differing pixel is a difference of the nets. The PyTorch net runs in float32 without TF32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accuracy_study import load_splits, metrics  # noqa: E402
from lightning_mbu.predict import load_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--backend", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    images, masks, ids = load_splits(a.data, a.split_seed)["test"]
    reference = load_model(a.checkpoint, backend=a.backend)
    packed = load_model(a.model, backend=a.backend)

    def run(model):
        start = time.perf_counter()
        out = torch.cat([model(images[i:i + a.batch_size]).float().cpu() for i in range(0, len(images), a.batch_size)])
        return out, time.perf_counter() - start

    ref, _ = run(reference)
    got, seconds = run(packed)
    differ = ((got > 0) != (ref > 0)).flatten(1).sum(1)
    near = ((got > 0) != (ref > 0)) & (ref.abs() < 1e-3)  # decisions on a logit within rounding of 0
    report = {"backend": a.backend, "images": len(ids), "pixels": int(masks.numel()),
              "differing_pixels": int(differ.sum()), "images_differing": int((differ > 0).sum()),
              "differing_with_reference_logit_below_1e-3": int(near.sum()),
              "differing_by_image": {i: int(d) for i, d in zip(ids, differ) if d},
              "max_abs_logit_difference": float((got - ref).abs().max()),
              "packed_dice": metrics(got, masks)["dice"], "pytorch_dice": metrics(ref, masks)["dice"],
              "packed_seconds": round(seconds, 3)}
    text = json.dumps(report, indent=1)
    if a.output:
        Path(a.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
