"""The Optuna search: the sampler on a synthetic game, and real searches on the built-in sample.

The end-to-end runs use 32x32 images, base width 4 and one-batch epochs, so that a trial
takes well under a second; worker and crash tests really spawn and kill processes.
"""

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from lightning_mbu.cli import main
from lightning_mbu.search.sampler import ShapleyCostSampler
from lightning_mbu.search.storage import make_storage

REPO = Path(__file__).resolve().parents[1]
TINY = ["--size", "32x32", "--base", "4", "--batch-size", "2", "--train-batches", "1", "--val-batches", "1",
        "--epochs-per-trial", "1", "--cost-size", "64x64"]

pytest.importorskip("lightning_mbu.module", reason="SegmentationModule not built yet")
pytest.importorskip("lightning_mbu.data", reason="SegmentationDataModule not built yet")


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "lightning_mbu.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="mbu-search", storage=f"sqlite:///{out / 'study.db'}")


def finished(study) -> list:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


# -- the sampler ---------------------------------------------------------------------------
def test_sampler_masks_layers_with_high_gain_per_cost_and_never_repeats():
    cost = {"cheap_good": 1.0, "cheap_bad": 1.0, "dear_good": 20.0, "dear_bad": 20.0, "mid_good": 5.0}
    gain = {"cheap_good": 0.10, "cheap_bad": -0.10, "dear_good": 0.02, "dear_bad": -0.10, "mid_good": 0.08}
    rng = np.random.default_rng(0)
    sampler = ShapleyCostSampler(cost, n_startup=6, explore=0.0, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        masked = [n for n in cost if trial.suggest_categorical(n, ["binary", "masked"]) == "masked"]
        return 0.5 + sum(gain[n] for n in masked) + rng.normal(0, 0.005), sum(cost[n] for n in masked)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=16)
    configs = [tuple(t.params[n] for n in cost) for t in study.trials]
    assert len(set(configs)) == len(configs)
    guided = study.trials[6:]
    rate = {n: np.mean([t.params[n] == "masked" for t in guided]) for n in cost}
    assert rate["cheap_good"] > rate["cheap_bad"]
    assert rate["mid_good"] > rate["dear_bad"]


# -- storage under contention ----------------------------------------------------------------
def _take_queued(url: str) -> list[int]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="race", storage=make_storage(url, 1, 5))
    taken = []
    while True:
        trial = study.ask()
        if not trial.user_attrs.get("queued"):
            return taken  # the queue is empty: ask made a fresh trial
        taken.append(trial.suggest_int("x", 0, 29))


def test_queued_trials_are_taken_once_by_concurrent_workers(tmp_path):
    # plain Optuna on SQLite hands some queued trials to two workers (optuna#4002)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=make_storage(url, 1, 5))
    for x in range(30):
        study.enqueue_trial({"x": x}, user_attrs={"queued": True})
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        taken = [x for xs in pool.map(_take_queued, [url] * 3) for x in xs]
    assert sorted(taken) == list(range(30))


# -- end to end -----------------------------------------------------------------------------
def test_search_budget_6_on_the_sample_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["search", "--budget", "6", "--out", str(out), *TINY]) == 0
    assert "Pareto front" in capsys.readouterr().out
    study = load(out)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 6 and summary["budget"] == 6
    assert summary["pareto_front"] and {"config", "dice", "cost"} <= set(summary["pareto_front"][0])
    assert set(summary["shapley"]) == {"all", "fewer_than_5_masked"}
    ran = {c["k"]: c["trials"] for c in summary["cost_aware"]}
    assert all(len(ran[k]) == 1 for k in range(6)) and not any(ran[k] for k in range(6, 13))
    for name in ("pareto.png", "shapley.png", "trials.csv", "pareto.csv"):
        assert (out / name).stat().st_size > 0
    # resuming with a larger budget continues the same study
    assert main(["search", "--budget", "8", "--out", str(out), *TINY]) == 0
    assert len(finished(load(out))) == 8


def test_two_workers_share_one_sqlite_storage(tmp_path):
    out = tmp_path / "w"
    r = cli("search", "--budget", "5", "--workers", "2", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(out)
    done = finished(study)
    assert len(done) == 5
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    configs = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(configs)) == len(configs)  # each queued cost-aware config ran once


RUNNING_SQL = {
    # right after a worker took the trial: before the objective starts
    "at_start": "SELECT number FROM trials WHERE state = 'RUNNING'",
    # after the trial has validated at least one epoch
    "mid_training": "SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                    "WHERE t.state = 'RUNNING' AND a.key = 'val_dice' AND a.value_json != '[]'",
}


def _wait_for_running_trial(out: Path, proc: subprocess.Popen, when: str, timeout: float = 180) -> int:
    """The number of a trial running (``when``) after at least one trial has completed."""
    db = out / "study.db"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    completed = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
                    running = [n for (n,) in con.execute(RUNNING_SQL[when]).fetchall()]
            except sqlite3.OperationalError:
                completed, running = 0, []  # tables not created yet
            if completed and running:
                return running[0]
        time.sleep(0.01)
    raise AssertionError(f"no trial was running ({when})")


@pytest.mark.parametrize("when", ["at_start", "mid_training"])
def test_killed_worker_loses_nothing_and_the_study_completes_on_restart(tmp_path, when):
    out = tmp_path / "k"
    args = ["search", "--budget", "3", "--out", str(out), "--heartbeat", "1", "--grace", "2", *TINY,
            "--epochs-per-trial", "6"]  # long enough to be killed mid-trial
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_mbu.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        killed = _wait_for_running_trial(out, proc, when)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number for t in load(out).get_trials(states=(TrialState.COMPLETE,))}
    assert before
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(out)
    assert len(finished(study)) == 3
    assert before <= {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}  # nothing lost
    trials = {t.number: t for t in study.trials}
    assert trials[killed].state == TrialState.FAIL  # marked stale by the heartbeat
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retries and retries[0].state == TrialState.COMPLETE
    # the retry runs the same queued config, even when the kill came before all 12 were suggested
    assert retries[0].params == trials[killed].system_attrs["fixed_params"]


def test_grid_over_a_subset_gives_exact_shapley_and_resume_checks_settings(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["search", "--grid", "--layers", "up_ct3,Up-CT4", "--budget", "50", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == 4 and summary["finished"] == 4
    assert summary["shapley"]["all"]["method"] == "exact"
    assert set(summary["shapley"]["all"]["values"]) == {"up_ct3", "up_ct4"}
    capsys.readouterr()
    assert main(["search", "--grid", "--layers", "up_ct2", "--out", str(out), *TINY]) == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_storage_gives_a_clear_error(tmp_path, capsys):
    assert main(["search", "--budget", "2", "--out", str(tmp_path), "--storage", "nosuchdb://x/y", *TINY]) == 2
    assert "cannot open study storage 'nosuchdb://x/y'" in capsys.readouterr().err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert main(["search", "--budget", "2", "--out", str(tmp_path), "--storage", f"sqlite:///{junk}", *TINY]) == 2
    assert "junk.db" in capsys.readouterr().err


def test_journal_storage_runs_a_budget(tmp_path):
    journal = tmp_path / "study.log"
    assert main(["search", "--budget", "2", "--out", str(tmp_path), "--storage", f"journal:{journal}", *TINY]) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert len(finished(optuna.load_study(study_name="mbu-search", storage=storage))) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["finished"] == 2


# -- what one process builds and imports -----------------------------------------------------
def test_the_cost_model_is_built_once_per_process(tmp_path, monkeypatch):
    from lightning_mbu.search import settings
    from lightning_mbu.search.cost import CostModel

    built = []
    measure = CostModel.measure.__func__
    monkeypatch.setattr(CostModel, "measure",
                        classmethod(lambda cls, *a, **kw: built.append(a) or measure(cls, *a, **kw)))
    settings._cost_model.cache_clear()  # an earlier test may have built this size already
    # queueing, the worker's sampler and objective, and the summary all ask for it
    assert main(["search", "--budget", "3", "--out", str(tmp_path), *TINY]) == 0
    assert len(finished(load(tmp_path))) == 3
    assert built == [((64, 64),)]


def test_plots_import_matplotlib_only_when_a_figure_is_drawn(tmp_path):
    # the package's own __init__ loads Lightning, whose torchmetrics imports matplotlib: load the
    # subpackage under a bare package so that only plots' imports and theirs count
    code = ("import sys, types\n"
            "pkg = sys.modules['lightning_mbu'] = types.ModuleType('lightning_mbu')\n"
            f"pkg.__path__ = [{str(REPO / 'lightning_mbu')!r}]\n"
            "from lightning_mbu.search import plots\n"
            "assert 'matplotlib' not in sys.modules, 'imported with the module'\n"
            "t = {'cost': 2e9, 'dice': 0.5, 'cost_aware_k': 0}\n"
            "plots.plot_pareto([t], [t], sys.argv[1])\n"
            "assert 'matplotlib' in sys.modules\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot state touched'\n")
    png = tmp_path / "pareto.png"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
