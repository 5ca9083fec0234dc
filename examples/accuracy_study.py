"""The paper's Table 1 rows (and the gap-closing ablations, and a cost-aware sweep) on one GPU, in one call.

    python -m lightning_mbu.data.cache ../shared/data/dsb2018 .cache/dsb2018-512 --size 512
    python examples/accuracy_study.py run --data .cache/dsb2018-512 --out runs/study --total-seconds 440

Two phases on one GPU, each row a separate process (they share the card):
1. the full-precision net trains alone (it is the teacher and the initialisation of phase 2);
2. every quantized row trains at once, for the same wall-clock budget: the Table 1 rows from
   scratch (INT8, INT4, MBU-Net, Binary), MBU-Net initialised from the FP net, + distillation
   from it, + a masking warm-up, and cost-aware configs k = 0, 2, 8, 12 with the best recipe.

Training follows App. A.3 where the budget allows (gradient clipping 1.0, weight decay 1e-8,
batch-norm after every conv) and departs from it where it does not: Adam at a peak rate of 1e-3
with a cosine decay over the time budget, for every row (the paper's RMSprop/Adam at 1e-5 for 30
epochs at batch 2 is ~6k steps; a few minutes give a few hundred), on random 256x256 crops with
flips/transposes (fully convolutional, so evaluation runs on the whole 512x512 images), in bf16
mixed precision. Evaluation is in float32 on the seeded split of ``SegmentationDataModule``
(seed 0: 15% validation, 15% test). Each row writes ``<row>.json``; ``run`` gathers them in
``results.json``, exports the best MBU-Net (by validation Dice) with ``lightning-mbu export``,
and checks the packed model on the CUDA backend when it is available.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
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
    init_from_fp: bool = False
    distill: bool = False
    mask_warmup_epochs: int = 0  # linear ramp of the masking factor t from 0 to 0.5


#: cost-aware configs: mask the k cheapest layers by eq. 2 (w_op 0.5) at 512x512, base 64
#: (``lightning-mbu cost --size 512x512`` lists them)
COST_AWARE = {0: "BBBBBBBBBBBB", 2: "BBBBBBMMBBBB", 4: "BBBBMMMMBBBB", 8: "MMMBMMMMBBBM", 12: "MMMMMMMMMMMM"}
ROWS: dict[str, Row] = {
    "fp": Row(None),
    # Table 1, from scratch
    "int8": Row("888888888888", stem="int8"),
    "int4": Row("444444444444", stem="int4"),
    "mbu": Row(COST_AWARE[4]),
    "binary": Row("BBBBBBBBBBBB", stem="binary"),
    # gap-closing ablations on the MBU-Net config
    "mbu_init": Row(COST_AWARE[4], init_from_fp=True),
    "mbu_init_kd": Row(COST_AWARE[4], init_from_fp=True, distill=True),
    "mbu_init_kd_warm": Row(COST_AWARE[4], init_from_fp=True, distill=True, mask_warmup_epochs=3),
    # cost-aware sweep (Fig. 7) with init + distillation; k = 4 is mbu_init_kd
    **{f"k{k}_init_kd": Row(COST_AWARE[k], init_from_fp=True, distill=True) for k in (0, 2, 8, 12)},
}
MBU_ROWS = ("mbu", "mbu_init", "mbu_init_kd", "mbu_init_kd_warm")


# -- data: the whole split on the device, augmented there ------------------------------------
def load_splits(root: str, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """{split: (images uint8 N x 3 x H x W, masks uint8 N x 1 x H x W)}: the data module's seeded split."""
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
    return images.float().div(127.5).sub(1.0)  # [-1, 1], as the data module's Normalize(0.5, 0.5)


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
        return normalize(x), y.float()


def eval_loader(images, masks, batch_size: int):
    ds = torch.utils.data.TensorDataset(normalize(images), masks.float())
    return torch.utils.data.DataLoader(ds, batch_size=batch_size)


# -- training --------------------------------------------------------------------------------
def make_time_budget(seconds: float, peak_lr: float, warmup: float = 0.03):
    """A callback: cosine learning rate over the elapsed share of ``seconds``, then stop."""
    import lightning.pytorch as pl

    class TimeBudget(pl.Callback):
        def __init__(self):
            self.start, self.steps, self.epochs, self.losses = None, 0, 0, []

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def progress(self) -> float:
            return min(1.0, (time.perf_counter() - self.start) / seconds)

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
            self.losses.append(None if loss is None else float(loss))

    return TimeBudget()


def per_image_dice(logits: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Dice of (logits > 0) per image; 1 where both prediction and mask are empty."""
    p, t = (logits > 0).flatten(1).float(), masks.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).tolist()


@torch.no_grad()
def predict(net, images, batch_size: int, device) -> torch.Tensor:
    return torch.cat([net(normalize(images[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def evaluate(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """The SegmentationModule's test metrics (Dice per image averaged, pooled IoU and F1) of a whole split."""
    from lightning_mbu.module import segmentation_metrics

    metrics, target = segmentation_metrics(""), masks.long()
    metrics["dice"].update((logits > 0).long(), target)
    metrics["iou"].update(logits.sigmoid(), target)
    metrics["f1"].update(logits.sigmoid(), target)
    return {k: float(v) for k, v in metrics.compute().items()}


def wait_for(path: Path, deadline: float) -> dict:
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear in time")
        time.sleep(1.0)
    return json.loads(path.read_text())


def train_row(a) -> int:
    import lightning.pytorch as pl

    from lightning_mbu.callbacks import MBUCallback
    from lightning_mbu.distill import DistillationModule, load_fp_weights
    from lightning_mbu.module import SegmentationModule

    row = ROWS[a.row]
    work = Path(a.work)
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    cuda = torch.cuda.is_available() and a.accelerator != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    splits = load_splits(a.data, a.seed)
    train_images, train_masks = (t.to(device) for t in splits["train"][:2])
    seconds = a.seconds
    if a.row != "fp":  # phase 2: wait until the FP net is trained (and the GPU is ours to share)
        seconds = wait_for(work / "phase2.json", time.time() + a.wait_seconds)["seconds"]
    fp_ckpt = work / "fp.ckpt"
    if (row.init_from_fp or row.distill) and not fp_ckpt.is_file():
        raise FileNotFoundError(f"row {a.row} needs the FP checkpoint {fp_ckpt}, which phase 1 did not write")

    pl.seed_everything(a.seed, workers=True, verbose=False)
    kwargs = dict(config=row.config, base=a.base, stem_mode=row.stem, optimizer="adam", lr=a.lr)
    if row.distill:
        module = DistillationModule(teacher=str(fp_ckpt), kd_weight=a.kd_weight, init_from_teacher=row.init_from_fp,
                                    **kwargs)
    else:
        module = SegmentationModule(**kwargs)
        if row.init_from_fp:
            load_fp_weights(module.net, fp_ckpt)
    budget = make_time_budget(seconds, a.lr)
    callbacks = [budget]
    if row.config is not None:
        schedule = "linear" if row.mask_warmup_epochs else "constant"
        callbacks.append(MBUCallback(row.config, mask_schedule=schedule, target_t=0.5,
                                     warmup_epochs=row.mask_warmup_epochs, stem_mode=row.stem))
    loader = torch.utils.data.DataLoader(CropDataset(train_images, train_masks, a.crop, a.seed),
                                         batch_size=a.batch_size, shuffle=True, drop_last=True)
    common = dict(accelerator="gpu" if cuda else "cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(max_epochs=a.max_epochs, precision="bf16-mixed" if cuda else "32-true",
                         limit_val_batches=0, num_sanity_val_steps=0, **common, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    train_seconds = time.perf_counter() - start

    result = {"row": a.row, **asdict(row), "base": a.base, "crop": a.crop, "batch_size": a.batch_size, "lr": a.lr,
              "seconds_budget": seconds, "train_seconds": train_seconds, "steps": budget.steps,
              "epochs": budget.epochs, "train_loss": budget.losses,
              "device": torch.cuda.get_device_name() if cuda else "cpu"}
    net = module.net.eval()
    if row.config is not None:
        result["weight_states"] = net.weight_state_fractions()
        result["mask_t"] = callbacks[-1].current_t
    # saved before evaluation, so a row stopped at the deadline still leaves its weights and curve
    hparams = {k: v for k, v in module.hparams.items() if k not in ("teacher", "kd_weight", "kd_temperature",
                                                                   "init_from_teacher")}
    torch.save({"hyper_parameters": hparams, "state_dict": {k: v.cpu() for k, v in module.state_dict().items()}},
               work / f"{a.row}.ckpt")
    (work / f"{a.row}.train.json").write_text(json.dumps(result, indent=1))

    # one float32 pass (no TF32, as the packed engines compute) per split over the whole images
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net.to(device)
    for split in ("val", "test"):
        images, masks, ids = splits[split]
        logits = predict(net, images, a.batch_size, device)
        result[split] = evaluate(logits, masks)
        if split == "test":
            result["test_per_image_dice"] = dict(zip(ids, per_image_dice(logits, masks)))
    (work / f"{a.row}.json").write_text(json.dumps(result, indent=1))
    print(f"{a.row}: {budget.epochs} epochs / {budget.steps} steps in {train_seconds:.0f} s; "
          f"test dice {result['test']['dice']:.4f}", flush=True)
    return 0


# -- the one-call driver ---------------------------------------------------------------------
def export_best(results: dict, work: Path, out: Path) -> dict:
    """Export the MBU-Net row with the best validation Dice through the `lightning-mbu export` command."""
    from lightning_mbu.cli import main
    from lightning_mbu.export import cli as export_cli

    done = [r for r in MBU_ROWS if r in results and "val" in results[r]]
    if not done:
        return {"error": "no MBU-Net row finished"}
    best = max(done, key=lambda r: results[r]["val"]["dice"])
    parser = argparse.ArgumentParser(prog="lightning-mbu")
    export_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    target = out / "mbu_best.mbu"
    code = main(["export", str(work / f"{best}.ckpt"), "-o", str(target)], parser=parser)
    return {"row": best, "file": target.name, "exit_code": code,
            "bytes": target.stat().st_size if target.exists() else None}


def check_cuda_engine(results: Path, data: str, seconds: float) -> dict:
    """``check --backend cuda`` on the exported model, in a subprocess with a time limit."""
    cmd = [sys.executable, __file__, "check", str(results), str(results.parent / "mbu_best.mbu"), "--data", data,
           "--backend", "cuda"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, seconds))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {seconds:.0f} s"}
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout)


def run(a) -> int:
    start = time.time()
    deadline = start + a.total_seconds
    out, work = Path(a.out), Path(a.work or Path(a.out) / "work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    rows = ["fp", *[r for r in (a.rows.split(",") if a.rows else ROWS) if r != "fp"]]
    log = open(out / "study.log", "w")
    common = ["--data", a.data, "--work", str(work), "--base", str(a.base), "--crop", str(a.crop),
              "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--seed", str(a.seed), "--accelerator",
              a.accelerator, "--max-epochs", str(a.max_epochs), "--kd-weight", str(a.kd_weight),
              "--wait-seconds", str(a.total_seconds)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {}
    for r in rows:  # phase-2 rows start now too: imports and data loading overlap with FP training
        threads = max(1, (os.cpu_count() or 2) // len(rows))
        procs[r] = subprocess.Popen([sys.executable, __file__, "train", "--row", r, "--seconds", str(a.fp_seconds),
                                     "--threads", str(threads), *common], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        procs["fp"].wait(timeout=max(1.0, deadline - a.reserve_seconds - time.time()))
    except subprocess.TimeoutExpired:
        procs["fp"].kill()
    phase2 = deadline - time.time() - a.reserve_seconds
    (work / "phase2.json").write_text(json.dumps({"seconds": phase2}))
    print(f"phase 1 (fp) ended after {time.time() - start:.0f} s, exit {procs['fp'].returncode}; "
          f"phase 2: {len(rows) - 1} rows for {phase2:.0f} s each", flush=True)
    for r, p in procs.items():
        try:
            p.wait(timeout=max(1.0, deadline - a.export_seconds - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            print(f"{r}: killed at the deadline", flush=True)
    results = {r: json.loads((work / f"{r}.json").read_text()) for r in rows if (work / f"{r}.json").exists()}
    trained = {r: json.loads((work / f"{r}.train.json").read_text()) for r in rows
               if r not in results and (work / f"{r}.train.json").exists()}
    summary = {"rows": results, "trained_not_evaluated": trained,
               "missing": [r for r in rows if r not in results and r not in trained],
               "settings": {k: v for k, v in vars(a).items() if k != "func"}}
    summary["export"] = export_best(results, work, out)
    summary["wall_seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    left = deadline - time.time()
    if summary["export"].get("exit_code") == 0 and torch.cuda.is_available() and left > 15:
        summary["cuda_engine"] = check_cuda_engine(out / "results.json", a.data, left - 5)
        (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"{'row':<18}{'config':>14}{'epochs':>7}{'steps':>6}{'val dice':>9}{'test dice':>10}{'iou':>7}{'f1':>7}")
    for r, res in results.items():
        t = res["test"]
        print(f"{r:<18}{res['config'] or 'FP':>14}{res['epochs']:>7}{res['steps']:>6}{res['val']['dice']:9.4f}"
              f"{t['dice']:10.4f}{t['iou']:7.4f}{t['f1']:7.4f}")
    print(f"missing: {summary['missing']}; export: {summary['export']}; wall {summary['wall_seconds']:.0f} s")
    if "cuda_engine" in summary:
        print("cuda engine:", summary["cuda_engine"].get("error", "ok"))
    return 0


def check_engine(a) -> int:
    """Test-set Dice of the exported model on a packed backend against the PyTorch net it came from."""
    from lightning_mbu import load_packed

    summary = json.loads(Path(a.results).read_text())
    row = summary["export"]["row"]
    ref = summary["rows"][row]["test_per_image_dice"]
    images, masks, ids = load_splits(a.data, summary["settings"]["seed"])["test"]
    model = load_packed(a.model, backend=a.backend)
    device = "cuda" if a.backend == "cuda" else "cpu"
    start = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([model(normalize(images[i:i + 8]).to(device)).float().cpu()
                            for i in range(0, len(images), 8)])
    dice = dict(zip(ids, per_image_dice(logits, masks)))
    diff = np.array([dice[i] - ref[i] for i in ids])
    report = {"row": row, "backend": a.backend, "images": len(ids), "engine_mean_dice": float(np.mean(list(dice.values()))),
              "pytorch_mean_dice": float(np.mean([ref[i] for i in ids])), "max_abs_diff": float(np.abs(diff).max()),
              "images_differing": int((np.abs(diff) > 0).sum()), "seconds": time.perf_counter() - start}
    print(json.dumps(report, indent=1))
    return 0


# -- the report: Table 1 next to the paper, Fig. 3a, 3c and 7 ------------------------------------
#: the paper's Nuclei column of Table 1 (Dice, IoU, F1)
PAPER_NUCLEI = {"fp": (0.867, 0.776, 0.874), "int8": (0.823, 0.741, 0.851), "int4": (0.819, 0.739, 0.850),
                "mbu": (0.817, 0.722, 0.839), "binary": (0.434, 0.302, 0.464)}
TABLE_ROWS = {"fp": "Full precision", "int8": "INT8 weights", "int4": "INT4 weights", "mbu": "MBU-Net",
              "binary": "Binary"}


def table(rows: dict) -> str:
    """Markdown: the Table 1 rows, then the ablations and the sweep, each beside the paper where it has one."""
    head = ("| row | config (stem) | epochs / steps | val Dice | test Dice | test IoU | test F1 | paper Dice / IoU / F1 |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, res in rows.items():
        t, paper = res["test"], PAPER_NUCLEI.get(name)
        cfg = "FP" if res["config"] is None else f"`{res['config']}` ({res['stem']})"
        lines.append(f"| {TABLE_ROWS.get(name, name)} | {cfg} | {res['epochs']} / {res['steps']} | "
                     f"{res['val']['dice']:.3f} | {t['dice']:.3f} | {t['iou']:.3f} | {t['f1']:.3f} | "
                     + (" / ".join(f"{v:.3f}" for v in paper) if paper else "") + " |")
    return "\n".join(lines)


def figures(a) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_mbu.config import PAPER_NAMES
    from lightning_mbu.search.cost import CostModel

    summary = json.loads(Path(a.results).read_text())
    rows, out = summary["rows"], Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(table(rows))

    # Fig. 3a: -1 / 0 / +1 share of every masked layer of the exported MBU-Net and of the all-masked net
    nets = [r for r in (summary.get("export", {}).get("row"), "k12_init_kd") if r in rows]
    fig, axes = plt.subplots(1, len(nets), figsize=(5 + 3 * len(nets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], nets):
        states = rows[name]["weight_states"]
        labels = [PAPER_NAMES.get(n, "stem") for n in states]
        bottom = np.zeros(len(states))
        for key, color in (("zero", "tab:gray"), ("neg", "tab:blue"), ("pos", "tab:red")):
            v = np.array([s[key] for s in states.values()])
            ax.bar(labels, v, bottom=bottom, color=color, label={"zero": "0 (masked)", "neg": "-1", "pos": "+1"}[key])
            bottom += v
        ax.set_title(f"{name}: `{rows[name]['config']}`", fontsize=9)
        ax.set_ylabel("share of weights")
        ax.tick_params(axis="x", rotation=60)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "fig3a_sparsity.png", dpi=120)
    plt.close(fig)

    # Fig. 7: test Dice against the deployed net's binary ops (512x512, base 64) for the cost-aware configs
    cost = CostModel.measure((512, 512), base=64)
    ranked = cost.cost_aware_configs()
    stale = {k: c for k, c in COST_AWARE.items() if str(ranked[k]) != c}
    if stale:
        raise ValueError(f"COST_AWARE no longer matches the cost model's ranking: {stale}")
    sweep = [(k, f"k{k}_init_kd" if k != 4 else "mbu_init_kd") for k in sorted(COST_AWARE)]
    pts = [(k, cost.config_binary_ops(COST_AWARE[k]) / 1e9, rows[r]["test"]["dice"]) for k, r in sweep if r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", color="tab:orange", label="cost-aware k, FP init + KD")
    for k, x, y in pts:
        ax.annotate(f"k={k}", (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    for name, marker in (("mbu", "s"), ("binary", "v")):
        if name in rows:
            model = cost if rows[name]["stem"] == "masked" else CostModel.measure((512, 512), 64,
                                                                                  stem_mode=rows[name]["stem"])
            ax.scatter([model.config_binary_ops(rows[name]["config"]) / 1e9], [rows[name]["test"]["dice"]], marker=marker,
                       color="tab:gray", label=f"{name}, from scratch")
    if "fp" in rows:
        ax.axhline(rows["fp"]["test"]["dice"], color="tab:green", ls="--", lw=1, label="full precision")
    ax.set_xlabel("G binary ops (xor encoding, 512x512, base 64)")
    ax.set_ylabel("test Dice")
    st = summary["settings"]
    ax.set_title(f"trained at {Path(st['data']).name}, base {st['base']} ({rows['fp']['device'] if 'fp' in rows else ''})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig7_pareto_ops.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'fig3a_sparsity.png'}, {out / 'fig7_pareto_ops.png'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "train"):
        s = sub.add_parser(name)
        s.add_argument("--data", required=True, help="dataset root (e.g. the 512x512 cache)")
        s.add_argument("--base", type=int, default=64)
        s.add_argument("--crop", type=int, default=256, help="training crop size")
        s.add_argument("--batch-size", type=int, default=8)
        s.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
        s.add_argument("--kd-weight", type=float, default=1.0)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--accelerator", default="auto")
        s.add_argument("--max-epochs", type=int, default=1000, help="also stop after this many epochs")
        s.add_argument("--wait-seconds", type=float, default=600)
    r, t = sub.choices["run"], sub.choices["train"]
    r.add_argument("--out", required=True, help="results folder (results.json, study.log, mbu_best.mbu)")
    r.add_argument("--work", default=None, help="checkpoints and per-row JSON (default OUT/work)")
    r.add_argument("--rows", default=None, help=f"comma-separated subset of {', '.join(ROWS)}")
    r.add_argument("--total-seconds", type=float, default=440, help="wall-clock budget of the whole study")
    r.add_argument("--fp-seconds", type=float, default=110, help="training time of the FP net (phase 1)")
    r.add_argument("--reserve-seconds", type=float, default=55, help="kept after phase 2 for evaluation and export")
    r.add_argument("--export-seconds", type=float, default=20, help="kept for export after the rows are stopped")
    r.set_defaults(func=run)
    t.add_argument("--row", choices=ROWS, required=True)
    t.add_argument("--work", required=True)
    t.add_argument("--seconds", type=float, default=60, help="training time (phase 2 rows read it from phase2.json)")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=train_row)
    c = sub.add_parser("check", help="the exported model's test Dice on a packed backend vs its PyTorch net")
    c.add_argument("results")
    c.add_argument("model")
    c.add_argument("--data", required=True)
    c.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    c.set_defaults(func=check_engine)
    f = sub.add_parser("figures", help="Table 1 as markdown, Fig. 3a and Fig. 7 from a results.json")
    f.add_argument("results")
    f.add_argument("--out", default="docs")
    f.set_defaults(func=figures)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
