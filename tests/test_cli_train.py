import csv
import json

import pytest

from lightning_mbu.cli import build_parser, main
from lightning_mbu.commands import SAMPLE_DEFAULTS, build_trainer
from lightning_mbu.commands.train import resolve_defaults

# tiny settings so a run on the built-in sample takes seconds
QUICK = ["--size", "32", "--base", "4", "--max-epochs", "2", "--limit-train-batches", "2", "--no-progress-bar",
         "--accelerator", "cpu", "--devices", "1"]


def train(tmp_path, *extra, name="run"):
    out = tmp_path / f"{name}.json"
    rc = main(["train", *QUICK, "--default-root-dir", str(tmp_path / name), "--output", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_train_eval_info_on_the_builtin_sample(tmp_path, capsys):
    res = train(tmp_path)
    assert res["config"] == "BBBBMMMMBBBB" and res["base"] == 4 and res["epochs"] == 2
    assert res["data"]["data_root"] is None and res["data"]["size"] == [32, 32]
    for m in ("dice", "iou", "f1"):
        assert 0 <= res["test"][m] <= 1
    best = res["best_checkpoint"]
    assert best and (tmp_path / "run").exists() and res["last_checkpoint"].endswith("last.ckpt")
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as f:
        columns = next(csv.reader(f))
    assert {"val/dice", "val/iou", "val/f1", "train/loss_epoch", "mbu/t", "sparsity/up_ct1/zero"} <= set(columns)
    out = capsys.readouterr().out
    assert "split  images  dice" in out and best in out

    # eval rebuilds the same split from the checkpoint: its test Dice is train's
    assert main(["eval", best, "--output", str(tmp_path / "eval.json"), "--split", "test", "val",
                 "--no-progress-bar", "--accelerator", "cpu"]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["config"] == "BBBBMMMMBBBB" and ev["metrics"]["test"]["images"] == 4
    assert ev["metrics"]["test"]["dice"] == pytest.approx(res["test"]["dice"], abs=1e-6)
    assert ev["metrics"]["val"]["dice"] == pytest.approx(res["best_val_dice"], abs=1e-6)
    assert "test   4" in capsys.readouterr().out

    assert main(["info", best, "--output", str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    rows = {r["layer"]: r for r in info["layers"]}
    assert [rows[n]["mode"] for n in ("down1", "up_ct1", "up1", "stem", "inc1")] == [
        "binary", "masked", "binary", "masked", "fp"]
    assert 0 < rows["up_ct1"]["zero"] < 1 and rows["down1"]["zero"] == 0
    assert info["parameters"] == sum(r["params"] for r in info["layers"])
    assert "Up-CT1" in capsys.readouterr().out


def test_full_precision_run_then_quantized_run_initialised_from_it(tmp_path):
    fp = train(tmp_path, "--config", "fp", "--batch-size", "2", "--limit-test-batches", "1", name="fp")
    assert fp["config"] == "fp" and fp["test"]["images"] == 2  # one test batch of two
    # no --base: the width comes from the full-precision checkpoint
    args = [a for a in QUICK if a not in ("--base", "4")]
    out = tmp_path / "q.json"
    assert main(["train", *args, "--init-from", fp["last_checkpoint"], "--config", "up_ct1=M,up_ct2=M",
                 "--default-root-dir", str(tmp_path / "q"), "--output", str(out)]) == 0
    q = json.loads(out.read_text())
    assert q["base"] == 4 and q["config"] == "BBBBMMBBBBBB"


def test_trainer_flags_pass_through(tmp_path):
    args = build_parser().parse_args(
        ["train", "--accelerator", "cpu", "--devices", "1", "--precision", "bf16-mixed", "--max-epochs", "3",
         "--limit-train-batches", "0.5", "--limit-val-batches", "2", "--logger", "csv",
         "--default-root-dir", str(tmp_path)])
    t = build_trainer(args, name="x")
    assert (t.max_epochs, t.limit_train_batches, t.limit_val_batches) == (3, 0.5, 2)
    assert t.precision == "bf16-mixed" and t.num_devices == 1 and str(tmp_path) in t.logger.log_dir


def test_sample_and_dataset_defaults(tmp_path):
    parse = build_parser().parse_args
    on_sample = resolve_defaults(parse(["train"]))
    assert (on_sample.base, on_sample.max_epochs, on_sample.lr, on_sample.size) == (
        SAMPLE_DEFAULTS["base"], SAMPLE_DEFAULTS["max_epochs"], SAMPLE_DEFAULTS["lr"], [SAMPLE_DEFAULTS["size"]])
    on_data = resolve_defaults(parse(["train", "--data", str(tmp_path), "--base", "32"]))
    assert (on_data.base, on_data.max_epochs, on_data.lr, on_data.size) == (32, 30, None, None)


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "BBBX"], "layer config 'BBBX' has 4 letters"),
    (["train", "--data", "/nonexistent/data"], "/nonexistent/data does not exist"),
    (["eval", "/nonexistent/model.ckpt"], "no such checkpoint"),
    (["info", "/nonexistent/model.ckpt"], "no such checkpoint"),
])
def test_errors_are_clean(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
