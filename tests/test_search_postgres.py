"""Three `lightning-mbu search` processes, as on three hosts, share one study through PostgreSQL.

Needs a server: ``MBU_TEST_POSTGRES_URL`` (``.ci/run`` starts one with ``.ci/postgres.sh``,
e.g. ``postgresql+psycopg2://postgres@127.0.0.1:5433/mbu_test``); skipped without it.
"""

import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
URL = os.environ.get("MBU_TEST_POSTGRES_URL")
TINY = ["--size", "32x32", "--base", "4", "--batch-size", "2", "--train-batches", "1", "--val-batches", "1",
        "--epochs-per-trial", "1", "--cost-size", "64x64"]


def _reachable(url: str) -> str | None:
    """None when the server answers, else why not."""
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect() as con:
            con.exec_driver_sql("SELECT 1")
    except Exception as e:  # a missing driver or a server that is down both mean: skip
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


pytestmark = [
    pytest.mark.skipif(not URL, reason="MBU_TEST_POSTGRES_URL is not set (.ci/run sets it when it can start "
                                       "PostgreSQL)"),
    pytest.mark.skipif(bool(URL) and _reachable(URL) is not None,
                       reason=f"PostgreSQL at MBU_TEST_POSTGRES_URL is unreachable: {URL and _reachable(URL)}"),
]


@pytest.fixture
def empty_database():
    """A fresh database on the server, so that the hosts also race to create Optuna's schema."""
    import sqlalchemy

    server = sqlalchemy.engine.make_url(URL)
    name = f"mbu_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.exec_driver_sql(f"CREATE DATABASE {name}")
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as con:
        con.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def test_three_hosts_share_a_postgresql_study_and_meet_the_budget_exactly(tmp_path, empty_database):
    url, name, budget = empty_database, "mbu-search", 7
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    hosts = [subprocess.Popen([sys.executable, "-m", "lightning_mbu.cli", "search", "--storage", url,
                               "--study-name", name, "--budget", str(budget), "--out", str(tmp_path / f"host{i}"),
                               *TINY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outputs = [p.communicate(timeout=300) for p in hosts]
    for p, (out, err) in zip(hosts, outputs):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=name, storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == budget
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # unique, from the storage
    configs = [t.user_attrs["config"] for t in done]
    assert len(set(configs)) == len(configs)  # no queued cost-aware config ran twice
    ran_on = {t.user_attrs.get("worker") for t in done}
    assert len(ran_on) > 1, f"one host ran every trial: {ran_on}"


def _open_storage(url: str, barrier, results) -> None:
    from lightning_mbu.search.storage import make_storage

    barrier.wait()  # all at once, as hosts started together
    try:
        make_storage(url)
        results.put("ok")
    except ValueError as e:
        results.put(str(e))


def test_hosts_starting_together_on_an_empty_database_all_open_it(empty_database):
    # without the retry in make_storage, two of three lose the race to create Optuna's schema
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_open_storage, args=(empty_database, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 3
