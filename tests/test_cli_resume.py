"""Ctrl-C prints the resume command; resuming continues the same run folder, metrics.csv and best score."""

import csv
import json
import shlex
import signal
import subprocess
import sys
import time

import torch

from lightning_mbu.cli import main

ARGS = ["train", "--size", "32", "--base", "4", "--max-epochs", "500", "--limit-train-batches", "2",
        "--limit-val-batches", "1", "--limit-test-batches", "1", "--no-progress-bar", "--accelerator", "cpu",
        "--devices", "1", "--logger", "csv", "--teacher-epochs", "1"]


def rows(metrics_csv):
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def val_epochs(metrics_csv):
    return [int(r["epoch"]) for r in rows(metrics_csv) if r.get("val/dice")]


def test_interrupt_then_resume_continues_the_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "lightning_mbu", *ARGS, "--default-root-dir", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = root / "lightning_logs" / "BBBBMMMMBBBB" / "version_0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # interrupt a few epochs after the first checkpoint
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            time.sleep(3)
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last = run_dir / "checkpoints" / "last.ckpt"
    lines = [line.strip() for line in (out + err).splitlines() if line.strip().startswith("lightning-mbu train")]
    assert lines, out + err
    resume = shlex.split(lines[-1])
    assert resume[resume.index("--ckpt-path") + 1] == str(last)
    # the automatic teacher is trained once: the resumed run distils from the same checkpoint
    (teacher,) = (root / "lightning_logs" / "fp" / "version_0" / "checkpoints").glob("best-*.ckpt")
    assert resume[1:resume.index("--ckpt-path")] == [*ARGS, "--default-root-dir", str(root), "--teacher", str(teacher)]

    before = val_epochs(run_dir / "metrics.csv")
    saved_epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    # epochs after last.ckpt's are run again on resume (their rows replaced): the best score is that of
    # the epochs the checkpoint holds
    best_before = max(float(r["val/dice"]) for r in rows(run_dir / "metrics.csv")
                      if r.get("val/dice") and int(r["epoch"]) <= saved_epoch)
    interrupted_at = max(before)
    # resume as printed, but with a relative spelling of the checkpoint path and a near end
    monkeypatch.chdir(root)
    argv = resume[1:]
    argv[argv.index("--ckpt-path") + 1] = str(last.relative_to(root))
    end = interrupted_at + 3
    assert main([*argv, "--max-epochs", str(end), "--output", str(tmp_path / "r.json")]) == 0

    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]  # no version_1
    epochs = val_epochs(run_dir / "metrics.csv")
    assert epochs == list(range(end)), epochs  # one metrics.csv, every epoch once
    res = json.loads((tmp_path / "r.json").read_text())
    all_val = [float(r["val/dice"]) for r in rows(run_dir / "metrics.csv") if r.get("val/dice")]
    assert res["best_val_dice"] == max(all_val) >= best_before  # the best score before the interrupt counts
    best_files = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best_files) == 1 and str(best_files[0].name) in res["best_checkpoint"]
