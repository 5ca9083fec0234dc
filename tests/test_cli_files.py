"""No lost files: no command overwrites its input, an existing output needs --force (through the real CLI)."""

import json

import pytest

from lightning_mbu.cli import main

QUICK = ["--size", "32", "--base", "4", "--max-epochs", "1", "--limit-train-batches", "2", "--limit-val-batches", "1",
         "--limit-test-batches", "1", "--no-progress-bar", "--accelerator", "cpu", "--devices", "1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    assert main(["train", *QUICK, "--default-root-dir", str(root), "--output", str(root / "r.json")]) == 0
    return json.loads((root / "r.json").read_text())["last_checkpoint"]


def refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", [["export", "{ck}", "-o", "{ck}"], ["eval", "{ck}", "--output", "{ck}"],
                                     ["info", "{ck}", "--output", "{ck}"]])
def test_input_is_never_overwritten(ckpt, capsys, command):
    before = open(ckpt, "rb").read()
    argv = [a.format(ck=ckpt) for a in command]
    refused(capsys, argv, f"output {ckpt} is the input")
    refused(capsys, [*argv, "--force"], "is the input")  # not even with --force
    assert open(ckpt, "rb").read() == before


@pytest.mark.parametrize("command", [["export", "{ck}", "-o", "{out}"], ["eval", "{ck}", "--output", "{out}"],
                                     ["info", "{ck}", "--output", "{out}"]])
def test_existing_output_needs_force(ckpt, tmp_path, capsys, command):
    out = tmp_path / ("model.mbu" if command[0] == "export" else "out.json")
    out.write_text("precious")
    argv = [a.format(ck=ckpt, out=out) for a in command] + ["--accelerator", "cpu"] * (command[0] == "eval")
    refused(capsys, argv, f"output {out} exists; pass --force to overwrite it")
    assert out.read_text() == "precious"
    assert main([*argv, "--force"]) == 0
    assert out.read_bytes() != b"precious"
    if out.suffix == ".json":
        json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left beside it


def test_train_checks_its_output_before_training(tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("{}")
    refused(capsys, ["train", *QUICK, "--default-root-dir", str(tmp_path / "r"), "--output", str(out)],
            f"output {out} exists")
    assert not (tmp_path / "r").exists()  # refused before any training or logging


def test_export_default_output_beside_the_checkpoint_is_not_overwritten(ckpt, capsys, tmp_path):
    import shutil

    ck = shutil.copy(ckpt, tmp_path / "model.ckpt")
    assert main(["export", str(ck)]) == 0
    refused(capsys, ["export", str(ck)], f"output {tmp_path / 'model.mbu'} exists; pass --force")
