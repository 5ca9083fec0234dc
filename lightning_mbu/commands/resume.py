"""Resuming a `lightning-mbu train` run: in its own folder, with its metrics.csv and its best score.

Lightning alone, given ``--ckpt-path``, starts a new ``version_N`` (splitting the metrics
over two folders) and, because the checkpoint folder changed, forgets the best
validation Dice so far. Here the run folder is taken from where the checkpoint lies
(``<root>/lightning_logs/<name>/version_N/checkpoints/x.ckpt``), the loggers write to that
same version, metrics.csv keeps its rows up to the resumed step and grows from there,
and the ModelCheckpoint states saved in the checkpoint are adopted however the folder
is spelt (relative or absolute). On Ctrl-C the command to resume is printed.
"""

from __future__ import annotations

import csv
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from ..files import atomic_write


@dataclass(frozen=True)
class RunFolder:
    """A run's folder (the one holding ``checkpoints/``) and the global step its resumed checkpoint was saved at."""

    path: Path
    step: int  # metrics rows logged after it belong to the interrupted epoch, which runs again

    # the loggers write to <save_dir>/<name>/<version>, which is ``path``
    @property
    def save_dir(self) -> Path:
        return self.path.resolve().parent.parent

    @property
    def name(self) -> str:
        return self.path.resolve().parent.name

    @property
    def version(self) -> str:
        return self.path.resolve().name


def run_folder(ckpt_path: str | os.PathLike, global_step: int) -> RunFolder | None:
    """The run a checkpoint belongs to, if it lies in a run's ``checkpoints`` folder."""
    ckpt_path = Path(ckpt_path)
    if ckpt_path.parent.name != "checkpoints":
        return None
    return RunFolder(ckpt_path.parent.parent, global_step)


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps its rows up to ``step``."""

    def __init__(self, log_dir: str, step: int):
        self._resume_step = step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            kept = [r for r in reader if r.get("step") in (None, "") or int(float(r["step"])) <= self._resume_step]
        with atomic_write(path, "w", newline="") as f:  # rows past the checkpoint belong to the lost epoch
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = keys  # appended rows follow the same columns (Lightning keeps them sorted)


class ContinuedCSVLogger(CSVLogger):
    """A CSVLogger that continues an earlier run's metrics.csv from a resumed global step."""

    def __init__(self, *args, resume_step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment


def _rebase(state: dict, old: str, new: str) -> dict:
    """A ModelCheckpoint state with the paths in folder ``old`` moved to folder ``new``."""
    def move(p):
        return os.path.join(new, os.path.basename(p)) if p and os.path.dirname(p) == old else p

    state = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = move(state[key])
    if "best_k_models" in state:
        state["best_k_models"] = {move(p): v for p, v in state["best_k_models"].items()}
    return state


class Resumable(Callback):
    """Adopts the saved ModelCheckpoint states of the resumed folder; prints how to resume after Ctrl-C.

    ``argv``: the command's arguments (without the program name), for the resume line.
    ``last``: the callback that writes ``last.ckpt``.
    """

    def __init__(self, argv: list[str], last: ModelCheckpoint, program: str = "lightning-mbu"):
        self.argv, self.last, self.program = list(argv), last, program

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # runs before the callbacks' load_state_dict: a state saved in this same folder under another
        # spelling (relative vs absolute, a symlink) is this folder's, so its best score carries over
        states = checkpoint.get("callbacks", {})
        for cb in trainer.checkpoint_callbacks:
            state = states.get(cb.state_key)
            saved = state.get("dirpath") if isinstance(state, dict) else None
            if saved and cb.dirpath and saved != cb.dirpath and os.path.isdir(cb.dirpath) \
                    and _same_dir(saved, cb.dirpath, trainer.ckpt_path):
                states[cb.state_key] = _rebase(state, saved, cb.dirpath)

    def resume_command(self, ckpt: str) -> str:
        argv, i = [], 0
        while i < len(self.argv):  # drop an earlier --ckpt-path
            a = self.argv[i]
            if a == "--ckpt-path":
                i += 2
                continue
            if not a.startswith("--ckpt-path="):
                argv.append(a)
            i += 1
        return shlex.join([self.program, *argv, "--ckpt-path", ckpt])

    @rank_zero_only
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        ckpt = self.last.best_model_path  # the no-monitor callback's latest save: last.ckpt
        if ckpt and os.path.isfile(ckpt):
            print(f"\ninterrupted in epoch {trainer.current_epoch}; the last checkpoint is {ckpt}. Resume with:\n"
                  f"  {self.resume_command(ckpt)}", file=sys.stderr, flush=True)
        else:
            print(f"\ninterrupted in epoch {trainer.current_epoch}, before the first checkpoint: nothing to resume",
                  file=sys.stderr, flush=True)


def _same_dir(saved: str, current: str, ckpt_path: str | None) -> bool:
    """Whether a saved checkpoint folder is ``current``: the same real path, or the resumed file lies in ``current``."""
    if os.path.realpath(saved) == os.path.realpath(current):
        return True
    return bool(ckpt_path) and os.path.realpath(os.path.dirname(ckpt_path)) == os.path.realpath(current)
