"""The command's polish: --version, python -m, descriptions, defaults in every help, eval without training flags."""

import argparse
import subprocess
import sys

import pytest

import lightning_mbu
from lightning_mbu.cli import build_parser, main


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lightning-mbu {lightning_mbu.__version__}"
    out = subprocess.run([sys.executable, "-m", "lightning_mbu", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"lightning-mbu {lightning_mbu.__version__}"


def test_every_subcommand_has_a_description():
    for name, p in subparsers().items():
        assert p.description and len(p.description) > 30, name


def test_every_flag_shows_its_default():
    missing = []
    for name, p in subparsers().items():
        for action in p._actions:
            if not action.option_strings or action.required or action.help == argparse.SUPPRESS or action.nargs == 0:
                continue  # positionals, required flags, -h, on/off switches
            help_text = p.formatter_class(prog=p.prog)._expand_help(action) if action.help else ""
            if "default" not in help_text.lower():
                missing.append(f"{name} {action.option_strings[-1]}")
    assert not missing, missing


def test_eval_help_has_no_training_flags():
    flags = {s for a in subparsers()["eval"]._actions for s in a.option_strings}
    for training_only in ("--no-augment", "--max-epochs", "--ckpt-path", "--lr", "--seed", "--logger",
                          "--default-root-dir", "--init-from"):
        assert training_only not in flags
    assert {"--split", "--output", "--accelerator", "--batch-size", "--size"} <= flags
