"""The paper's Table 1 on Nuclei, and what each training method buys, on one GPU; it finishes what it starts.

    python -m lightning_mbu.data.cache ../shared/data/dsb2018 .dcache/dsb2018-512 --size 512
    python examples/accuracy_study.py run --data .dcache/dsb2018-512 --out runs/study --total-seconds 560
    python examples/accuracy_study.py evaluate --data .dcache/dsb2018-512 --work runs/study/work --out runs/study

Steps, each its own process, each writing its files as it goes:
1. ``train --run fp-s0`` (one per FP seed, concurrently): the full-precision nets, saved as
   ``WORK/fp-sN.ckpt`` + ``fp-sN.train.json``; each is the teacher and initialisation of seed N.
2. ``train --run ROW-sN`` for every quantized run, concurrently, started with step 1 (imports and data
   loading overlap) and training once the teachers exist, until a common wall-clock end, so every run
   of a phase gets the same time on the shared card. Saves ``ROW-sN.ckpt`` + ``ROW-sN.train.json``.
3. ``evaluate`` (one process, after training; re-run it alone any time): every saved checkpoint, most
   important first (FP and MBU-Net seeds, then the Table 1 rows, then the ablations), in float32 on the
   whole images of the seeded validation and test splits; writes ``ROW-sN.eval.json`` per run, then
   ``OUT/table1-nuclei.json`` (mean and spread over seeds) and ``OUT/results.json`` (every run).
4. ``export`` of the best MBU-Net seed (by validation Dice) and ``check`` of the packed model on a
   backend against its PyTorch net (differing pixels on the test split).

The quantized rows of Table 1 (INT8, INT4, MBU-Net, Binary; binary activations everywhere) train with
the default recipe of ``lightning-mbu train``: initialised from the FP net of their seed and distilled
from it (logits; ``mbu_feature_kd`` adds every layer's pre-activation), ApproxSign gradients, and a
linear warm-up of the masking factor t. The
ablation rows take one method away at a time (or use the earlier recipes), seed 0.

Training (all rows): Adam, peak rate 1e-3 with a 3% warm-up and a cosine decay over the run's
wall-clock budget, weight decay 1e-8, gradient clipping 1.0, batch 8 of random 256x256 crops with
flips/transposes (whole splits live on the GPU, augmented there: the GPU machine has no
albumentations), bf16 mixed precision, channels-last; images normalised per image to zero mean and
unit variance (the data module's default). Evaluation: float32, no TF32, whole 512x512 images, the
module's metrics (Dice per image averaged; IoU and F1 pooled), final weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lightning_mbu.data.datamodule import split_indices  # noqa: E402
from lightning_mbu.data.dataset import read_sample  # noqa: E402
from lightning_mbu.data.layouts import get_layout  # noqa: E402


@dataclass(frozen=True)
class Row:
    config: str | None  # None: full precision
    stem: str = "masked"
    init: bool = True  # start from the FP net of the same seed
    kd: bool = True  # distil the logits from it
    feature_kd: bool = False  # ... and every activation's input (costs ~40% of the steps in a fixed time)
    sign_gradient: str = "approx"  # "approx" (ApproxSign) or "ste" (hard-tanh)
    warmup_epochs: int = 3  # linear ramp of the masking factor t from 0
    masked_t: float = 0.5
    seeds: tuple[int, ...] = (0,)


MBU = "BBBBMMMMBBBB"  # the cost-aware config (the four transposed convs masked)
RECIPE = Row(MBU)
FP = Row(None, init=False, kd=False, feature_kd=False, sign_gradient="ste", warmup_epochs=0, seeds=(0, 1, 2))
SCRATCH = dict(init=False, kd=False, feature_kd=False, sign_gradient="ste", warmup_epochs=0)
ROWS: dict[str, Row] = {
    # Table 1 (in evaluation order)
    "fp": FP,
    "mbu": replace(RECIPE, seeds=(0, 1, 2)),
    "int8": replace(RECIPE, config="888888888888", stem="int8"),
    "int4": replace(RECIPE, config="444444444444", stem="int4"),
    "binary": replace(RECIPE, config="BBBBBBBBBBBB", stem="binary"),
    # ablations on the MBU-Net config, seed 0: one method taken away, and the earlier recipes
    "mbu_feature_kd": replace(RECIPE, feature_kd=True),
    "mbu_ste": replace(RECIPE, sign_gradient="ste"),
    "mbu_no_warmup": replace(RECIPE, warmup_epochs=0),
    "mbu_t025": replace(RECIPE, masked_t=0.25),
    "mbu_init_kd": replace(RECIPE, sign_gradient="ste", warmup_epochs=0),
    "mbu_scratch": replace(RECIPE, **SCRATCH),
}
TABLE1 = ("fp", "int8", "int4", "mbu", "binary")


def runs_of(rows) -> list[str]:
    return [f"{r}-s{s}" for r in rows for s in ROWS[r].seeds]


def parse_run(run: str) -> tuple[str, int]:
    row, seed = run.rsplit("-s", 1)
    if row not in ROWS or int(seed) not in ROWS[row].seeds:
        raise ValueError(f"unknown run {run!r}; valid: {', '.join(runs_of(ROWS))}")
    return row, int(seed)


# -- data: the whole split on the device, augmented there ------------------------------------
def load_splits(root: str, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """{split: (images uint8 N x 3 x H x W, masks uint8 N x 1 x H x W, ids)}: the data module's seeded split."""
    samples = get_layout(None, Path(root)).find(Path(root))
    idx = split_indices(len(samples), val_fraction, test_fraction, seed)
    out = {}
    for name, ix in zip(("train", "val", "test"), idx):
        pairs = [read_sample(samples[i]) for i in sorted(ix)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        out[name] = (images, masks, [samples[i].id for i in sorted(ix)])
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Each image to zero mean and unit variance (albumentations' ``Normalize(normalization="image")``)."""
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-4)


class CropDataset(torch.utils.data.Dataset):
    """Random ``crop`` x ``crop`` windows with a random flip/transpose, cut from tensors on any device."""

    def __init__(self, images, masks, crop: int, seed: int):
        self.images, self.masks, self.crop = images, masks, crop
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        h, w = self.images.shape[-2:]
        c = min(self.crop, h, w)
        top, left = self.rng.integers(0, h - c + 1), self.rng.integers(0, w - c + 1)
        x = self.images[i, :, top:top + c, left:left + c]
        y = self.masks[i, :, top:top + c, left:left + c]
        flips = [d for d, f in zip((-1, -2), self.rng.random(2) < 0.5) if f]
        if flips:
            x, y = x.flip(flips), y.flip(flips)
        if self.rng.random() < 0.5:
            x, y = x.transpose(-1, -2), y.transpose(-1, -2)
        return normalize(x[None])[0], y.float()


# -- training --------------------------------------------------------------------------------
def make_time_budget(until: float, peak_lr: float, warmup: float = 0.03):
    """A callback: cosine learning rate over the share of the time left until ``until`` (epoch seconds), then stop."""
    import lightning.pytorch as pl

    class TimeBudget(pl.Callback):
        def __init__(self):
            self.start, self.steps, self.epochs, self.losses = None, 0, 0, []

        def on_train_start(self, trainer, pl_module):
            self.start = time.time()

        def progress(self) -> float:
            return min(1.0, (time.time() - self.start) / max(1e-3, until - self.start))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            p = self.progress()
            lr = peak_lr * (p / warmup if p < warmup else 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup))))
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = lr

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps += 1
            if self.progress() >= 1.0:
                trainer.should_stop = True

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs += 1
            loss = trainer.callback_metrics.get("train/loss_epoch")
            self.losses.append(None if loss is None else round(float(loss), 4))

    return TimeBudget()


def wait_for(path: Path, deadline: float) -> dict:
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear in time")
        time.sleep(0.5)
    return json.loads(path.read_text())


def build_module(row: Row, a, teacher: Path):
    from lightning_mbu.config import QuantSpec
    from lightning_mbu.distill import load_fp_weights
    from lightning_mbu.module import SegmentationModule

    module = SegmentationModule(QuantSpec(row.config, stem=row.stem, t=row.masked_t), base=a.base,
                                optimizer="adam", lr=a.lr, teacher=teacher if row.kd else None,
                                init_from_teacher=row.init, feature_kd_weight=1.0 if row.feature_kd else 0.0)
    if row.init and not row.kd:
        load_fp_weights(module.net, teacher)
    return module


def save_checkpoint(module, path: Path) -> None:
    """The net's hyper-parameters and weights in the SegmentationModule checkpoint layout (no teacher)."""
    hparams = module.net.hparams()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if k.startswith("net.")}
    tmp = path.with_suffix(".tmp")
    torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp)
    tmp.replace(path)


def train_run(a) -> int:
    import lightning.pytorch as pl

    from lightning_mbu.callbacks import MBUCallback

    name, seed = parse_run(a.run)
    row = ROWS[name]
    work = Path(a.work)
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    cuda = torch.cuda.is_available() and a.accelerator != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    train_images, train_masks, _ = load_splits(a.data, a.split_seed)["train"]
    train_images, train_masks = train_images.to(device), train_masks.to(device)
    if row.config is None:
        until = a.until
    else:  # wait for the driver's start signal: the FP nets are trained and the card is ours to share
        until = wait_for(work / "phase2.json", time.time() + a.wait_seconds)["until"]
    teacher = work / f"fp-s{seed}.ckpt"
    if row.config is not None and (row.init or row.kd) and not teacher.is_file():
        raise FileNotFoundError(f"run {a.run} needs the FP checkpoint {teacher}, which was not written")

    pl.seed_everything(seed, workers=True, verbose=False)
    module = build_module(row, a, teacher)
    budget = make_time_budget(until, a.lr)
    callbacks = [budget]
    if row.config is not None:
        # schedules the module's own QuantSpec (config, stem, t)
        callbacks.append(MBUCallback(mask_schedule="linear" if row.warmup_epochs else "constant",
                                     warmup_epochs=row.warmup_epochs, sign_gradient=row.sign_gradient))
    if cuda:
        module = module.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(CropDataset(train_images, train_masks, a.crop, seed),
                                         batch_size=a.batch_size, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_epochs=a.max_epochs, precision="bf16-mixed" if cuda else "32-true",
                         accelerator="gpu" if cuda else "cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=callbacks)
    start = time.time()
    trainer.fit(module, train_dataloaders=loader)
    train_seconds = time.time() - start
    save_checkpoint(module, work / f"{a.run}.ckpt")
    record = {"run": a.run, "row": name, "seed": seed, **{k: v for k, v in asdict(row).items() if k != "seeds"},
              "base": a.base, "crop": a.crop, "batch_size": a.batch_size, "lr": a.lr,
              "train_seconds": round(train_seconds, 1), "steps": budget.steps, "epochs": budget.epochs,
              "train_loss": budget.losses, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    if row.config is not None:
        record["mask_t"] = callbacks[-1].t
    (work / f"{a.run}.train.json").write_text(json.dumps(record, indent=1))
    print(f"{a.run}: {budget.epochs} epochs / {budget.steps} steps in {train_seconds:.0f} s", flush=True)
    return 0


# -- evaluation from saved checkpoints ------------------------------------------------------
def per_image_dice(logits: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Dice of (logits > 0) per image; 1 where both prediction and mask are empty."""
    p, t = (logits > 0).flatten(1).float(), masks.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).tolist()


@torch.no_grad()
def predict(net, images, device, batch_size: int = 8) -> torch.Tensor:
    return torch.cat([net(normalize(images[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def metrics(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """The SegmentationModule's test metrics (Dice per image averaged, pooled IoU and F1) of a whole split."""
    from lightning_mbu.module import segmentation_metrics

    m, target = segmentation_metrics("").to(logits.device), masks.long()
    m["dice"].update((logits > 0).long(), target)
    m["iou"].update(logits.sigmoid(), target)
    m["f1"].update(logits.sigmoid(), target)
    return {k: float(v) for k, v in m.compute().items()}


def load_net(ckpt: Path):
    from lightning_mbu.checkpoint import load_checkpoint

    return load_checkpoint(ckpt).net()


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def aggregate(work: Path) -> dict:
    """Every evaluated run, and Table 1 (mean and spread over seeds) from the ``*.eval.json`` files."""
    runs = {}
    for run in runs_of(ROWS):
        f = work / f"{run}.eval.json"
        if f.is_file():
            runs[run] = json.loads(f.read_text())
    rows = {}
    for name in ROWS:
        done = [runs[r] for r in runs_of([name]) if r in runs]
        if not done:
            continue
        row = {"config": ROWS[name].config, "stem": None if ROWS[name].config is None else ROWS[name].stem,
               "seeds": [r["seed"] for r in done], "method": {k: v for k, v in asdict(ROWS[name]).items()
                                                              if k not in ("config", "stem", "seeds")}}
        for m in ("dice", "iou", "f1"):
            s = summarize([r["test"][m] for r in done])
            row[m], row[f"{m}_std"] = s["mean"], s["std"]
            if m == "dice":
                row["dice_min"], row["dice_max"] = s["min"], s["max"]
        row["val_dice"] = statistics.fmean(r["val"]["dice"] for r in done)
        row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in done)
        row["steps"] = statistics.fmean(r["steps"] for r in done)
        rows[name] = row
    missing = [r for r in runs_of(ROWS) if r not in runs]
    return {"runs": runs, "rows": rows, "missing": missing}


def evaluate_runs(a) -> int:
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + a.seconds
    cuda = torch.cuda.is_available() and a.accelerator != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as the packed engines
    splits = load_splits(a.data, a.split_seed)
    for run in runs_of(ROWS):  # most important first: a deadline cuts the ablations, not Table 1
        ckpt, record, result = work / f"{run}.ckpt", work / f"{run}.train.json", work / f"{run}.eval.json"
        if not (ckpt.is_file() and record.is_file()) or (result.is_file() and not a.force):
            continue
        if time.time() > deadline:
            print(f"evaluate: out of time before {run}", flush=True)
            break
        net = load_net(ckpt).to(device)
        res = json.loads(record.read_text())
        for split in ("val", "test"):
            images, masks, ids = splits[split]
            logits = predict(net, images, device)
            res[split] = metrics(logits.to(device), masks.to(device))
            if split == "test":
                res["test_per_image_dice"] = dict(zip(ids, per_image_dice(logits, masks)))
        if net.is_quantized:
            res["weight_states"] = net.weight_state_fractions()
        result.write_text(json.dumps(res, indent=1))
        print(f"{run}: test dice {res['test']['dice']:.4f} iou {res['test']['iou']:.4f} f1 {res['test']['f1']:.4f} "
              f"(val {res['val']['dice']:.4f}; {res['steps']} steps, {res['train_seconds']:.0f} s)", flush=True)
        write_tables(work, out)  # after every run: a deadline keeps every row evaluated so far
    print(markdown_table(write_tables(work, out)))
    return 0


def write_tables(work: Path, out: Path) -> dict:
    """``OUT/table1-nuclei.json`` and ``OUT/results.json`` from the runs evaluated so far; returns Table 1."""
    summary = aggregate(work)
    table1 = {"rows": {k: summary["rows"][k] for k in TABLE1 if k in summary["rows"]},
              "ablation": {k: v for k, v in summary["rows"].items() if k not in TABLE1},
              "missing": summary["missing"], "settings": json.loads((work / "settings.json").read_text())
              if (work / "settings.json").is_file() else {}}
    if "fp" in table1["rows"] and "mbu" in table1["rows"]:
        table1["fp_minus_mbu_dice"] = table1["rows"]["fp"]["dice"] - table1["rows"]["mbu"]["dice"]
    (out / "table1-nuclei.json").write_text(json.dumps(table1, indent=1))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return table1


def markdown_table(table1: dict) -> str:
    """Table 1 and the ablations as markdown, mean +- standard deviation over the seeds."""
    def fmt(r, m):
        return f"{r[m]:.3f}" + (f" ± {r[m + '_std']:.3f}" if len(r["seeds"]) > 1 else "")

    lines = ["| row | config (stem) | seeds | steps | train s | test Dice | test IoU | test F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in {**table1["rows"], **table1["ablation"]}.items():
        cfg = "FP" if r["config"] is None else f"`{r['config']}` ({r['stem']})"
        lines.append(f"| {name} | {cfg} | {len(r['seeds'])} | {r['steps']:.0f} | {r['train_seconds']:.0f} | "
                     f"{fmt(r, 'dice')} | {fmt(r, 'iou')} | {fmt(r, 'f1')} |")
    return "\n".join(lines)


def print_table(a) -> int:
    print(markdown_table(json.loads(Path(a.table1).read_text())))
    return 0


# -- export and the packed engine ------------------------------------------------------------
def export_best(a) -> int:
    """Export the MBU-Net seed with the best validation Dice to ``OUT/mbu_best.mbu``."""
    from lightning_mbu.export import export_checkpoint

    work, out = Path(a.work), Path(a.out)
    done = {r: json.loads((work / f"{r}.eval.json").read_text()) for r in runs_of(["mbu"])
            if (work / f"{r}.eval.json").is_file()}
    if not done:
        raise SystemExit("export: no MBU-Net run was evaluated")
    best = max(done, key=lambda r: done[r]["val"]["dice"])
    packed = export_checkpoint(work / f"{best}.ckpt", out / "mbu_best.mbu")
    info = {"run": best, "checkpoint": str(work / f"{best}.ckpt"), "file": "mbu_best.mbu",
            "bytes": (out / "mbu_best.mbu").stat().st_size, "stages": len(packed.stages)}
    (out / "export.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return 0


def check_engine(a) -> int:
    """The packed model on a backend against the PyTorch net it came from, on the test split (engine_check.py)."""
    from engine_check import main as engine_check

    return engine_check([a.checkpoint, a.model, "--data", a.data, "--split-seed", str(a.split_seed),
                         "--backend", a.backend, *(["--output", a.output] if a.output else [])])


# -- the one-call driver ---------------------------------------------------------------------
def run(a) -> int:
    start = time.time()
    deadline = start + a.total_seconds
    out, work = Path(a.out), Path(a.work or Path(a.out) / "work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "phase2.json").unlink(missing_ok=True)
    rows = a.rows.split(",") if a.rows else list(ROWS)
    runs = runs_of(["fp", *[r for r in rows if r != "fp"]])
    settings = {k: v for k, v in vars(a).items() if k != "func"}
    (work / "settings.json").write_text(json.dumps(settings, indent=1))
    log = open(out / "study.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--data", a.data, "--work", str(work), "--base", str(a.base), "--crop", str(a.crop),
              "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--split-seed", str(a.split_seed),
              "--accelerator", a.accelerator, "--max-epochs", str(a.max_epochs), "--wait-seconds", str(a.total_seconds),
              "--threads", str(max(1, (os.cpu_count() or 2) // len(runs)))]
    fp_until = start + a.fp_seconds
    procs = {r: subprocess.Popen([sys.executable, __file__, "train", "--run", r, "--until", str(fp_until), *common],
                                 stdout=log, stderr=subprocess.STDOUT, env=env) for r in runs}
    fp_runs = [r for r in runs if r.startswith("fp-")]
    for r in fp_runs:
        try:
            procs[r].wait(timeout=max(1.0, fp_until + 60 - time.time()))
        except subprocess.TimeoutExpired:
            procs[r].kill()
            print(f"{r}: killed, it did not save in time", flush=True, file=log)
    train_end = deadline - a.eval_seconds - a.export_seconds
    (work / "phase2.json").write_text(json.dumps({"until": train_end}))
    print(f"phase 1 ({', '.join(fp_runs)}) ended after {time.time() - start:.0f} s; phase 2: {len(runs) - len(fp_runs)} "
          f"runs for {train_end - time.time():.0f} s", flush=True)
    for r, p in procs.items():
        try:
            p.wait(timeout=max(1.0, train_end + 45 - time.time()))  # 45 s to finish the last step and save
        except subprocess.TimeoutExpired:
            p.kill()
            print(f"{r}: killed at the deadline (no checkpoint)", flush=True)
    print(f"training ended after {time.time() - start:.0f} s", flush=True)
    me = [sys.executable, __file__]
    paths = ["--data", a.data, "--work", str(work), "--out", str(out), "--split-seed", str(a.split_seed)]
    # evaluate starts no new run once the export's time is near, and is stopped at the deadline
    steps = [("evaluate", [*me, "evaluate", *paths, "--seconds", str(max(5.0, deadline - a.export_seconds - 5
                                                                              - time.time()))]),
             ("export", [*me, "export", *paths])]
    for name, cmd in steps:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=max(1.0, deadline - time.time())).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"{name}: exit {code} after {time.time() - start:.0f} s", flush=True)
        if name == "evaluate" and code != 0:  # stopped mid-way: the tables still hold every run it finished
            write_tables(work, out)
    export = out / "export.json"
    if a.check_backend and export.is_file():
        ckpt = json.loads(export.read_text())["checkpoint"]
        cmd = [*me, "check", str(out / "mbu_best.mbu"), ckpt, "--data", a.data, "--split-seed", str(a.split_seed),
               "--backend", a.check_backend, "--output", str(out / f"check-{a.check_backend}.json")]
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=max(1.0, deadline + a.check_seconds - time.time())).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"check ({a.check_backend}): exit {code} after {time.time() - start:.0f} s", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(s, work_required=True):
        s.add_argument("--data", required=True, help="dataset root (e.g. the 512x512 cache)")
        s.add_argument("--split-seed", type=int, default=0, help="seed of the data module's train/val/test split")
        s.add_argument("--accelerator", default="auto")
        if work_required is not None:
            s.add_argument("--work", required=work_required, default=None,
                           help="checkpoints and per-run JSON (run: default OUT/work)")

    r = sub.add_parser("run", help="train every run, evaluate, export and check, inside --total-seconds")
    data_args(r, work_required=False)
    t = sub.add_parser("train", help="train one run (ROW-sSEED) and save its checkpoint and record")
    data_args(t)
    for s in (r, t):
        s.add_argument("--base", type=int, default=64)
        s.add_argument("--crop", type=int, default=256, help="training crop size")
        s.add_argument("--batch-size", type=int, default=8)
        s.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
        s.add_argument("--max-epochs", type=int, default=1000, help="also stop after this many epochs")
    r.add_argument("--out", required=True, help="results folder (table1-nuclei.json, results.json, study.log, ...)")
    r.add_argument("--rows", default=None, help=f"comma-separated subset of {', '.join(ROWS)} (fp always runs)")
    r.add_argument("--total-seconds", type=float, default=560, help="wall-clock budget of the whole study")
    r.add_argument("--fp-seconds", type=float, default=150, help="until the FP nets stop training (from the start)")
    r.add_argument("--eval-seconds", type=float, default=75, help="kept after training for evaluation")
    r.add_argument("--export-seconds", type=float, default=15, help="kept after evaluation for the export")
    r.add_argument("--check-backend", choices=("cpu", "cuda"), default=None, help="check the export on this backend")
    r.add_argument("--check-seconds", type=float, default=20, help="the check may run this long past the budget")
    r.set_defaults(func=run)
    t.add_argument("--run", required=True, help=f"ROW-sSEED, one of {', '.join(runs_of(ROWS))}")
    t.add_argument("--until", type=float, default=None, help="FP runs: train until this time (epoch seconds)")
    t.add_argument("--wait-seconds", type=float, default=600, help="quantized runs: wait this long for the teachers")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=train_run)
    e = sub.add_parser("evaluate", help="evaluate every saved checkpoint not yet evaluated; write Table 1")
    data_args(e)
    e.add_argument("--out", required=True)
    e.add_argument("--seconds", type=float, default=3600, help="start no new run after this long")
    e.add_argument("--force", action="store_true", help="evaluate runs evaluated before again")
    e.set_defaults(func=evaluate_runs)
    x = sub.add_parser("export", help="export the best MBU-Net seed (validation Dice) to OUT/mbu_best.mbu")
    data_args(x)
    x.add_argument("--out", required=True)
    x.set_defaults(func=export_best)
    c = sub.add_parser("check", help="a packed model vs its PyTorch checkpoint on the test split")
    c.add_argument("model")
    c.add_argument("checkpoint")
    data_args(c, work_required=None)
    c.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    c.add_argument("--output", default=None)
    c.set_defaults(func=check_engine)
    s = sub.add_parser("table", help="Table 1 and the ablations as markdown from a table1-nuclei.json")
    s.add_argument("table1")
    s.set_defaults(func=print_table)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
