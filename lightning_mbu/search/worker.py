"""The worker loop: run trials on the shared study until it holds the budget of finished ones.

The budget is met exactly where the storage has a heartbeat: a worker starts a trial only while
finished + running < budget and otherwise waits, since a running trial may still die (its
heartbeat goes stale, it is marked FAIL and queued again) and need a replacement. Journal
storages have no heartbeat: a killed worker's trial stays RUNNING and does not count, and the
budget may be exceeded by up to workers - 1 trials.
"""

from __future__ import annotations

import logging
import time

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from .cost import CostModel
from .objective import FINISHED, MBUObjective, SurplusTrial
from .pruning import COST_ATTR
from .sampler import ShapleyCostSampler
from .settings import SearchSettings
from .storage import fail_stale_trials, has_heartbeat, make_storage, open_study

log = logging.getLogger(__name__)


def make_sampler(settings: SearchSettings, cost_model: CostModel, worker: int = 0) -> optuna.samplers.BaseSampler:
    seed = settings.seed + 1000 * worker
    if settings.grid:
        return optuna.samplers.GridSampler({n: list(settings.choices) for n in settings.layers}, seed=seed)
    masking = cost_model.masking_cost(settings.encoding)
    return ShapleyCostSampler({n: masking[n] for n in settings.layers}, choices=settings.choices, seed=seed,
                              fallback=optuna.samplers.NSGAIISampler(seed=seed))


def run_worker(settings: SearchSettings, worker: int = 0) -> None:
    """Run trials until the study holds ``effective_budget`` finished ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(settings.trial.threads)
    try:
        _run_trials(settings, worker)
    finally:
        torch.set_num_threads(threads)


def _run_trials(settings: SearchSettings, worker: int) -> None:
    storage = make_storage(settings.storage_url, settings.heartbeat_interval, settings.grace_period)
    cost_model = settings.cost_model()
    study = open_study(settings, storage=storage, sampler=make_sampler(settings, cost_model, worker))
    budget = settings.effective_budget
    heartbeat = has_heartbeat(storage)
    objective = MBUObjective(settings, cost_model, count_running=heartbeat)
    stop_at_budget = MaxTrialsCallback(budget, states=FINISHED)
    while True:
        if heartbeat:
            fail_stale_trials(study)
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) if heartbeat else 0
        if done >= budget:
            return
        if done + running >= budget:  # the rest is in flight; stay in case one of them dies
            time.sleep(settings.poll_interval)
            continue
        study.optimize(objective, n_trials=budget - done - running, catch=(SurplusTrial,),
                       callbacks=[stop_at_budget, _log_trial], gc_after_trial=False)


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.user_attrs.get("surplus"):
        return
    dice = f"dice {trial.values[0]:.4f}" if trial.values else trial.state.name.lower()
    log.info("trial %d %s %s, cost %.2f G binary ops", trial.number, trial.user_attrs.get("config", "?"), dice,
             trial.user_attrs.get(COST_ATTR, float("nan")) / 1e9)
