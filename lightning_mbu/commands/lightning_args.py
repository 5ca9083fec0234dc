"""Arguments and builders shared by `lightning-mbu train`, `eval` and `info`.

Trainer flags pass through under Lightning's names (``--max-epochs`` -> ``max_epochs``);
data and model flags map onto SegmentationDataModule and SegmentationModule arguments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import parse_size
from ..data.datamodule import NORMALIZATIONS

#: what `lightning-mbu train` uses when no --data is given: the built-in sample, sized to
#: train and evaluate in a couple of minutes on 2 CPU cores (explicit flags override these)
SAMPLE_DEFAULTS = {"size": 128, "base": 8, "max_epochs": 40, "lr": 3e-3, "batch_size": 4}


def number(text: str) -> int | float:
    """'2' -> 2 (batches), '0.5' -> 0.5 (a fraction): Lightning's limit_*_batches convention."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (SegmentationDataModule)")
    g.add_argument("--data", dest="data_root", type=Path, default=None,
                   help="dataset folder (default: the built-in sample of 24 nuclei images)")
    g.add_argument("--layout", choices=("dsb2018", "carvana", "isic", "folder"), default=None,
                   help="dataset layout (default: detected from the folder)")
    g.add_argument("--size", nargs="+", metavar="SIZE", default=None,
                   help="resize to HxW, H W or N (NxN); default: the paper's size for the layout")
    g.add_argument("--batch-size", type=int, default=None, help="default 4")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 0)")
    g.add_argument("--val-fraction", type=float, default=None, help="default 0.15")
    g.add_argument("--test-fraction", type=float, default=None, help="default 0.15")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the train/val/test split (default 0)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                   help="pixel normalisation (default image: per-image zero mean, unit variance)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="train without augmentation")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip unreadable or inconsistent samples with a warning instead of stopping")


_DATA_KEYS = {"data_root": "data_root", "layout": "layout", "size": "size", "batch_size": "batch_size",
              "num_workers": "num_workers", "val_fraction": "val_fraction", "test_fraction": "test_fraction",
              "split_seed": "seed", "normalization": "normalization", "augment": "augment", "skip_bad": "skip_bad"}


def data_kwargs(args: argparse.Namespace, base: dict | None = None) -> dict:
    """SegmentationDataModule arguments: ``base`` (e.g. a checkpoint's) overridden by the flags given."""
    kw = dict(base or {})
    kw.update({dst: getattr(args, src) for src, dst in _DATA_KEYS.items() if getattr(args, src, None) is not None})
    if getattr(args, "size", None) is not None:
        kw["size"] = parse_size(args.size)
    if kw.get("data_root") is not None:
        kw["data_root"] = str(kw["data_root"])
    return kw


def add_trainer_args(p: argparse.ArgumentParser, fit: bool) -> None:
    g = p.add_argument_group("trainer (passed to lightning.pytorch.Trainer)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, auto, ... (default auto)")
    g.add_argument("--devices", default="auto", help="number, list or 'auto' (default auto)")
    g.add_argument("--precision", default=None, help="32-true, 16-mixed, bf16-mixed, ...")
    g.add_argument("--strategy", default="auto", help="e.g. ddp with --devices N for several GPUs")
    g.add_argument("--default-root-dir", type=Path, default=None, help="where logs and checkpoints go (default .)")
    g.add_argument("--logger", choices=("auto", "csv", "tensorboard", "none"), default="auto",
                   help="auto: CSV, plus TensorBoard when it is installed")
    g.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    g.add_argument("--seed", type=int, default=0, help="seed_everything (weights, augmentation)")
    g.add_argument("--limit-test-batches", type=number, default=None)
    if fit:
        g.add_argument("--max-epochs", type=int, default=None, help="default 30 (the paper's)")
        g.add_argument("--max-steps", type=int, default=-1)
        g.add_argument("--limit-train-batches", type=number, default=None)
        g.add_argument("--limit-val-batches", type=number, default=None)
        g.add_argument("--log-every-n-steps", type=int, default=10)
        g.add_argument("--check-val-every-n-epoch", type=int, default=1)
        g.add_argument("--sync-batchnorm", action="store_true", default=None,
                       help="batch-norm statistics over all devices' batches (DDP)")
        g.add_argument("--ckpt-path", type=Path, default=None,
                       help="resume training from this checkpoint (any number of devices)")


def _devices(text: str):
    if text == "auto":
        return text
    return [int(d) for d in text.split(",") if d] if "," in text else int(text)


def build_loggers(args: argparse.Namespace, name: str):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

    root = args.default_root_dir or Path(".")
    if args.logger == "none":
        return False
    if args.logger == "tensorboard" and not _TENSORBOARD_AVAILABLE:
        raise ValueError("--logger tensorboard needs the tensorboard package (pip install tensorboard)")
    csv = CSVLogger(root / "lightning_logs", name=name)
    if args.logger == "csv" or not _TENSORBOARD_AVAILABLE:
        return [csv]
    tb = TensorBoardLogger(root / "lightning_logs", name=name, version=csv.version)
    return [tb] if args.logger == "tensorboard" else [csv, tb]


def build_trainer(args: argparse.Namespace, name: str, callbacks=(), **overrides):
    import lightning.pytorch as pl

    kw = dict(accelerator=args.accelerator, devices=_devices(str(args.devices)), strategy=args.strategy,
              precision=args.precision, default_root_dir=args.default_root_dir, callbacks=list(callbacks),
              logger=build_loggers(args, name), enable_progress_bar=args.progress_bar,
              limit_test_batches=args.limit_test_batches)
    for key in ("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "log_every_n_steps",
                "check_val_every_n_epoch", "sync_batchnorm"):
        if hasattr(args, key):
            kw[key] = getattr(args, key)
    kw.update(overrides)
    return pl.Trainer(**{k: v for k, v in kw.items() if v is not None})


METRICS = ("dice", "iou", "f1", "loss")


def metrics_table(rows: list[dict]) -> str:
    """A fixed-width table of rows like {"split": "test", "images": 4, "dice": 0.8, ...}."""
    cols = ["split", "images", *[m for m in METRICS if any(m in r for r in rows)]]
    cells = [[c for c in cols]] + [
        [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def stage_metrics(results: dict, stage: str) -> dict:
    """{'dice': .., 'iou': .., 'f1': .., 'loss': ..} from Lightning's '<stage>/<metric>' results."""
    return {m: float(results[f"{stage}/{m}"]) for m in METRICS if f"{stage}/{m}" in results}


def tested_images(trainer, loader) -> int:
    """How many images the last ``trainer.test`` saw (``limit_test_batches`` may cut the loader short).

    Under DDP each rank tests its share of the loader, so the per-rank batches count ``world_size`` times.
    """
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    return min(len(loader.dataset), int(trainer.num_test_batches[0]) * loader.batch_size * trainer.world_size)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
