"""The Optuna study: create or resume it, queue the cost-aware configs, run the workers.

Two objectives per trial (``objective.MBUObjective``): maximise validation Dice, minimise the
config's binary-op cost (``cost.CostModel``). Several worker processes, or several hosts,
share one storage (``storage.make_storage``); trial numbers come from the storage, so two
workers never share one. RDB storages (SQLite by default) run Optuna's heartbeat: a worker
killed mid-trial leaves a RUNNING trial that goes stale after ``grace_period`` seconds, is
marked FAIL by the next worker that looks, and is queued again with the same config.
Finished trials are committed as they end, so re-running the same command resumes the study
up to the budget exactly (``worker.run_worker``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import optuna

from .cost import CostModel
from .settings import SearchSettings
from .storage import make_storage, open_study
from .worker import run_worker


def cost_aware_params(settings: SearchSettings, cost_model: CostModel) -> list[dict[str, str]]:
    """Trial params of the cost-aware configs: mask the k cheapest searched layers, k = 0..len(layers)."""
    order = [n for n in cost_model.ranking(settings.w_op) if n in settings.layers]
    return [{n: ("masked" if n in order[:k] else "binary") for n in settings.layers} for k in range(len(order) + 1)]


def enqueue_cost_aware(study: optuna.Study, settings: SearchSettings, cost_model: CostModel) -> None:
    """Queue the cost-aware configs first, as many as the budget takes (none already queued or run)."""
    for k, params in enumerate(cost_aware_params(settings, cost_model)[: settings.effective_budget]):
        study.enqueue_trial(params, user_attrs={"cost_aware_k": k}, skip_if_exists=True)


def run_search(settings: SearchSettings, worker_setup: Callable[[int], None] | None = None) -> optuna.Study:
    """Create or resume the study, queue the cost-aware configs, and run ``settings.workers`` workers.

    One worker runs in this process; several run as spawned processes on the same
    storage, one per GPU (round-robin) when GPUs exist, else sharing the CPU cores.
    A spawned process starts with Python's default logging and warning filters:
    ``worker_setup(worker)`` (a module-level function, to be picklable) runs first in
    each, e.g. to configure them as the caller configured its own.
    """
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    storage = make_storage(settings.storage_url, settings.heartbeat_interval, settings.grace_period)
    study = open_study(settings, storage=storage, create=True)
    if not settings.grid:
        enqueue_cost_aware(study, settings, settings.cost_model())
    if settings.workers == 1:
        run_worker(settings)
        return study
    gpus = _gpu_count()
    ctx = multiprocessing.get_context("spawn")  # CUDA and SQLite connections do not survive fork
    procs = [ctx.Process(target=_worker_process, name=f"mbu-search-worker-{i}",
                         args=(settings, i, i % gpus if gpus else None, worker_setup))
             for i in range(settings.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"search workers {', '.join(failed)} exited with an error; see their output above. "
                           "Finished trials are kept: re-run the same command to resume")
    return study


def _worker_process(settings: SearchSettings, worker: int, gpu: int | None,
                    worker_setup: Callable[[int], None] | None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA starts in this process
    if worker_setup is not None:
        worker_setup(worker)
    run_worker(settings, worker)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
