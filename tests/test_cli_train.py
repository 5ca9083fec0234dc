import csv
import json

import pytest

from lightning_mbu.cli import build_parser, main
from lightning_mbu.commands.lightning_args import SAMPLE_DEFAULTS, build_trainer
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


def _net_keys_only(ckpt_path):
    import torch

    saved = torch.load(ckpt_path, weights_only=True)
    assert all(k.startswith(("net.", "val_metrics", "test_metrics")) for k in saved["state_dict"]), "teacher saved"
    assert "teacher" not in saved["hyper_parameters"]
    return saved


def test_quantized_train_without_teacher_trains_one_first_and_distils_from_it(tmp_path, capsys):
    from test_packed_engine import assert_engine_matches_reference

    from lightning_mbu.checkpoint import load_checkpoint

    res = train(tmp_path, "--max-epochs", "4", name="auto")
    out = capsys.readouterr().out
    assert "no --teacher given: training the full-precision teacher first (2 epochs, base 4)" in out
    teacher = res["teacher"]
    assert teacher["trained_here"] and teacher["epochs"] == 2 and 0 <= teacher["test"]["dice"] <= 1
    assert f"{tmp_path / 'auto'}/lightning_logs/fp/version_0/checkpoints/" in teacher["checkpoint"]
    assert load_checkpoint(teacher["checkpoint"]).quant.config is None  # the teacher is full precision
    assert res["config"] == "BBBBMMMMBBBB" and res["epochs"] == 4
    assert res["recipe"] == {"teacher": teacher["checkpoint"], "init": "teacher", "kd_weight": 1.0,
                             "feature_kd_weight": 0.0, "sign_gradient": "approx", "mask_schedule": "linear",
                             "warmup_epochs": 1}
    with open(next((tmp_path / "auto" / "lightning_logs" / "BBBBMMMMBBBB").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert {"train/kd_epoch", "train/loss_epoch"} <= set(rows[0])
    assert [float(r["mbu/t"]) for r in rows if r.get("mbu/t")] == [0.0, 0.5, 0.5, 0.5]  # the linear warm-up
    _net_keys_only(res["best_checkpoint"])
    # what export reads is the student alone, and it packs bit-exactly
    import torch

    assert_engine_matches_reference(load_checkpoint(res["best_checkpoint"]).net(), torch.randn(2, 3, 32, 48), "xor")


def test_train_with_a_given_teacher_and_from_scratch(tmp_path, capsys):
    fp = train(tmp_path, "--config", "fp", name="fp")
    assert "teacher" not in fp and "recipe" not in fp
    args = [a for a in QUICK if a not in ("--base", "4")]  # the width comes from the teacher
    out = tmp_path / "t.json"
    assert main(["train", *args, "--teacher", fp["last_checkpoint"], "--sign-gradient", "ste",
                 "--default-root-dir", str(tmp_path / "t"), "--output", str(out)]) == 0
    given = json.loads(out.read_text())
    assert "training the full-precision teacher" not in capsys.readouterr().out
    assert not (tmp_path / "t" / "lightning_logs" / "fp").exists()
    assert given["base"] == 4 and given["teacher"] == {"checkpoint": fp["last_checkpoint"], "trained_here": False}
    assert given["recipe"]["teacher"] == fp["last_checkpoint"] and given["recipe"]["sign_gradient"] == "ste"
    _net_keys_only(given["last_checkpoint"])

    scratch = train(tmp_path, "--from-scratch", name="scratch")
    assert "teacher" not in scratch and not (tmp_path / "scratch" / "lightning_logs" / "fp").exists()
    assert scratch["recipe"] == {"teacher": None, "init": "random", "kd_weight": 0.0, "feature_kd_weight": 0.0,
                                 "sign_gradient": "ste", "mask_schedule": "constant", "warmup_epochs": 0}


def test_teacher_errors_are_clean(tmp_path, capsys):
    q = train(tmp_path, "--from-scratch", name="q")
    assert main(["train", *QUICK, "--teacher", q["last_checkpoint"]]) == 2
    assert "the teacher must be full precision" in capsys.readouterr().err
    assert main(["train", *QUICK, "--teacher", q["last_checkpoint"], "--from-scratch"]) == 2
    assert "--teacher cannot be combined with --from-scratch" in capsys.readouterr().err


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


@pytest.mark.parametrize("form", [["48x64"], ["48", "64"], ["48X64"]])
def test_size_accepts_both_forms_in_every_command(form, capsys):
    from lightning_mbu.commands.lightning_args import data_kwargs

    parser = build_parser()
    for command in (["train"], ["eval", "x.ckpt"]):
        assert data_kwargs(parser.parse_args([*command, "--size", *form]))["size"] == (48, 64)
    assert main(["cost", "--size", *form, "--base", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == [48, 64]
    args = parser.parse_args(["search", "--size", *form, "--cost-size", *form])
    assert args.size == form and args.cost_size == form  # parsed by config.parse_size in run_search_command
    from lightning_mbu.bench.presets import resolve

    assert resolve(None, parser.parse_args(["bench", "--size", *form]).size).size == (48, 64)


def test_square_size_and_bad_size(capsys):
    from lightning_mbu.commands.lightning_args import data_kwargs

    assert data_kwargs(build_parser().parse_args(["train", "--size", "40"]))["size"] == (40, 40)
    assert main(["cost", "--size", "4", "5", "6"]) == 2
    assert "HEIGHTxWIDTH, HEIGHT WIDTH or N" in capsys.readouterr().err


def test_info_reads_a_checkpoint_written_before_quant_spec(tmp_path, capsys):
    import torch

    from lightning_mbu import MBUNet, QuantSpec

    net = MBUNet(QuantSpec("BBBBMMMMBBBB", stem="binary", statistic="mean", t=0.3), base=4)
    old = {"config": "BBBBMMMMBBBB", "base": 4, "stem_mode": "binary", "masked_statistic": "mean", "masked_t": 0.3}
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": old, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "config BBBBMMMMBBBB, base 4, stem binary" in out and "up_ct1=0.3" in out


def test_bench_command_alone_needs_neither_optuna_nor_albumentations():
    import subprocess
    import sys

    code = ("import runpy, sys; sys.argv = ['bench', '--help']\n"
            "try:\n    runpy.run_module('lightning_mbu.bench', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('optuna', 'albumentations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--preset" in out and out.strip().endswith("[]")
