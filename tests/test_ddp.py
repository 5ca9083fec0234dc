"""SegmentationModule, its metrics and MBUCallback under Lightning DDP: 2 CPU processes (gloo).

``ddp_spawn`` keeps the runs inside pytest (``ddp`` would re-launch the pytest command).
Nets are base 4 on 16x16 images so that each 2-process run takes a few seconds.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_mbu import MBUCallback, QuantSpec, SegmentationModule
from lightning_mbu.callbacks import find_mbunet, linear_schedule

REPO = Path(__file__).resolve().parents[1]
CONFIG = "BBBBMMMMBBBB"
METRICS = ("val/loss", "val/dice", "val/iou", "val/f1")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed for CPU DDP")


def loader(n: int, seed: int, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = (x[:, :1] > 0.3).float()  # learnable, so the metrics are not those of a constant net
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(tmp_path, devices: int, **kw) -> pl.Trainer:
    kw = dict(max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
              logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              default_root_dir=tmp_path) | kw
    return pl.Trainer(**kw)


class SameWeightsOnEveryRank(Callback):
    """Fails the run unless every rank holds bit-identical quantized weights and masking factors."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.world_size == 1:
            return
        net = find_mbunet(pl_module)
        local = torch.cat([torch.cat([m.quantized_weight().flatten() for m in net.layer_convs(n)])
                           for n in ("down1", "up_ct1", "up4")] + [q.t.flatten() for _, q in net.masked_quantizers()])
        gathered = trainer.strategy.all_gather(local.detach())
        assert torch.equal(gathered[0], gathered[1]), "quantized weights differ between ranks"


def test_ddp_validation_metrics_equal_the_single_process_ones(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(CONFIG, base=4, lr=1e-2)
    callback = MBUCallback(QuantSpec(CONFIG, t=0.4))
    trainer(tmp_path, 1, max_epochs=2, callbacks=[callback]).fit(module, loader(8, seed=0))  # non-trivial weights
    val = loader(8, seed=1)  # 4 images per rank: no padding by the DistributedSampler
    single = trainer(tmp_path, 1, callbacks=[callback]).validate(module, val, verbose=False)[0]
    double = trainer(tmp_path, 2, callbacks=[callback]).validate(module, val, verbose=False)[0]
    assert 0 < single["val/dice"] < 1
    for key in METRICS:  # torchmetrics syncs its states; the loss is a mean of equal-sized rank means
        assert double[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def _fit(tmp_path, name: str, devices: int, epochs: int, ckpt_path=None) -> dict:
    """Fit, and return the last checkpoint: with ddp_spawn the trainer state lives in the workers."""
    callback = MBUCallback(QuantSpec(CONFIG, t=0.4), mask_schedule="linear", warmup_epochs=4)
    last = ModelCheckpoint(dirpath=tmp_path / name, filename="last", enable_version_counter=False)
    t = trainer(tmp_path, devices, max_epochs=epochs, logger=CSVLogger(tmp_path, name=name, version=0),
                log_every_n_steps=1, callbacks=[callback, last, SameWeightsOnEveryRank()])
    torch.manual_seed(0)
    t.fit(SegmentationModule(CONFIG, base=4, lr=1e-2), loader(16, seed=0, batch_size=4), ckpt_path=ckpt_path)
    return torch.load(tmp_path / name / "last.ckpt", map_location="cpu", weights_only=False)


def _logged(tmp_path, name: str) -> list[dict]:
    with open(tmp_path / name / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_checkpoint_resumes_on_another_number_of_devices(tmp_path, first, then):
    _fit(tmp_path, "a", first, epochs=1)
    ckpt = _fit(tmp_path, "b", then, epochs=3, ckpt_path=tmp_path / "a" / "last.ckpt")
    assert ckpt["epoch"] == 2
    # 16 images in batches of 4, split over the ranks: 4 steps per epoch on one device, 2 on two
    steps = {1: 4, 2: 2}
    assert ckpt["global_step"] == steps[first] + 2 * steps[then]
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("MBUCallback"))
    assert state["t"] == pytest.approx(linear_schedule(0.4, 4)(2))  # the schedule went on from epoch 1
    resumed = SegmentationModule.load_from_checkpoint(tmp_path / "b" / "last.ckpt", map_location="cpu")
    assert float(dict(resumed.net.masked_quantizers())["up_ct1"].t) == pytest.approx(state["t"])
    # rank zero writes the log: one row of t and sparsity per epoch, whatever the device count
    rows = [r for r in _logged(tmp_path, "b") if r.get("mbu/t")]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["mbu/t"]) for r in rows] == pytest.approx([0.1, 0.2])
    assert all(0 < float(r["sparsity/up_ct1/zero"]) < 1 for r in rows)


def test_cli_train_with_ddp_strategy_tests_like_one_device_eval(tmp_path):
    """`lightning-mbu train --devices 2 --strategy ddp` (Lightning re-launches the command per rank)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "lightning_mbu.cli", *a], capture_output=True,
                                    text=True, env=env, cwd=tmp_path, timeout=240)
    trained = run("train", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--size", "32",
                  "--base", "4", "--max-epochs", "2", "--logger", "csv", "--no-progress-bar",
                  "--output", "train.json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((tmp_path / "train.json").read_text())
    assert results["epochs"] == 2 and results["test"]["images"] == 4  # 2 per rank, counted once
    evaluated = run("eval", results["best_checkpoint"], "--split", "test", "--accelerator", "cpu", "--devices", "1",
                    "--output", "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    single = json.loads((tmp_path / "eval.json").read_text())["metrics"]["test"]
    for key in ("dice", "iou", "f1", "loss"):
        assert results["test"][key] == pytest.approx(single[key], rel=1e-5), key
