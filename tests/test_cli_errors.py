"""Errors, not tracebacks: one line naming the file or flag, through the real CLI."""

import json
import os

import pytest
import torch

from lightning_mbu.cli import main

QUICK = ["--size", "32", "--base", "4", "--max-epochs", "1", "--limit-train-batches", "1", "--limit-val-batches", "1",
         "--limit-test-batches", "1", "--no-progress-bar", "--accelerator", "cpu", "--devices", "1"]


def run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's refusals exit at once
        return e.code


def one_line_error(capsys, argv, *needles):
    assert run(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    for text in ("Traceback", "weights_only=False", "`weights_only` set to `False`", "usage:"):
        assert text not in err and text not in captured.out
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "random.ckpt").write_bytes(os.urandom(4096))
    good = d / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(100)}, "hyper_parameters": {}}, good)
    (d / "truncated.ckpt").write_bytes(good.read_bytes()[:300])
    (d / "empty.ckpt").write_bytes(b"")
    torch.save({"weights": torch.ones(3)}, d / "other.ckpt")  # a PyTorch file, not ours
    return d


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "other"])
@pytest.mark.parametrize("command", [["eval", "{f}"], ["info", "{f}"], ["export", "{f}", "-o", "{d}/x.mbu"],
                                     ["train", *QUICK, "--ckpt-path", "{f}"], ["train", *QUICK, "--init-from", "{f}"]])
def test_bad_checkpoints(bad_files, capsys, kind, command, tmp_path):
    f = bad_files / f"{kind}.ckpt"
    argv = [a.format(f=f, d=tmp_path) for a in command]
    if command[0] == "train":
        argv += ["--default-root-dir", str(tmp_path / "run")]
    one_line_error(capsys, argv, str(f), "not a lightning-mbu checkpoint")
    assert not (tmp_path / "x.mbu").exists() and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", [["train", *QUICK[:-4]], ["eval", "{ck}"]])
def test_gpu_requested_without_one(capsys, command, tmp_path):
    argv = [a.format(ck=tmp_path / "x.ckpt") for a in command] + ["--accelerator", "gpu"]
    (tmp_path / "x.ckpt").write_bytes(b"")  # flags are checked before any file is read
    one_line_error(capsys, argv, "--accelerator gpu", "no GPU")


@pytest.mark.parametrize("flag, value, needle", [
    ("--max-epochs", "-5", "--max-epochs"), ("--max-epochs", "0", "--max-epochs"), ("--base", "0", "--base"),
    ("--base", "-8", "--base"), ("--batch-size", "0", "--batch-size"), ("--size", "0", "--size"),
    ("--lr", "-1", "--lr"),
])
def test_bad_numbers_name_the_flag(capsys, tmp_path, flag, value, needle):
    one_line_error(capsys, ["train", "--default-root-dir", str(tmp_path), flag, value], needle, value)
    assert not (tmp_path / "lightning_logs").exists()


def test_a_size_that_cannot_fit_is_refused_before_training(capsys, tmp_path):
    err = one_line_error(capsys, ["train", *QUICK, "--size", "99999", "--default-root-dir", str(tmp_path)],
                         "--size 99999", "GiB")
    assert "--batch-size" in err and not (tmp_path / "lightning_logs").exists()


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing may be written into (made writable again afterwards, so tmp_path can be cleaned)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the refusal the OS would give is simulated
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(path)) else real(p, mode))
    else:
        path.chmod(0o555)
    yield path
    path.chmod(0o755)


def test_search_out_on_a_read_only_folder(capsys, read_only):
    one_line_error(capsys, ["search", "--budget", "1", "--out", str(read_only / "study")], str(read_only))
    one_line_error(capsys, ["search", "--budget", "1", "--out", str(read_only)], str(read_only), "not writable")


def test_info_output_in_a_read_only_folder(capsys, read_only):
    one_line_error(capsys, ["info", "--config", "fp", "--base", "4", "--output", str(read_only / "x.json")],
                   str(read_only))


def test_resume_with_other_model_flags(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["train", *QUICK, "--default-root-dir", str(tmp_path), "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    last, teacher = results["last_checkpoint"], results["teacher"]["checkpoint"]
    capsys.readouterr()
    one_line_error(capsys, ["train", *QUICK, "--config", "MMMMMMMMMMMM", "--ckpt-path", last, "--teacher", teacher,
                            "--default-root-dir", str(tmp_path)],
                   f"--ckpt-path {last} holds config BBBBMMMMBBBB, base 4", "MMMMMMMMMMMM")
