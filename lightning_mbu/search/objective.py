"""One trial: train a config briefly through Lightning, return (validation Dice, binary-op cost).

The budget counts COMPLETE + PRUNED trials. A trial asked after other workers' trials have
taken the budget, or a second copy of a queued cost-aware config (hosts that start together
may both queue it), ends at once as FAIL with the user attribute ``surplus``.
"""

from __future__ import annotations

import os
import socket
import time
from functools import cached_property

import optuna
from optuna.trial import TrialState

from ..config import QuantSpec
from .cost import CostModel
from .pruning import COST_ATTR, CURVE_ATTR, CheaperPercentileRule, DiceReporter
from .settings import SearchSettings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials the budget counts


class SurplusTrial(Exception):
    """This trial was asked after the budget was already taken by other workers' trials."""


class DuplicateTrial(SurplusTrial):
    """A second copy of a queued cost-aware config: hosts that start together may both enqueue it."""


class MBUObjective:
    """Train one config briefly through Lightning and return (validation Dice, binary-op cost)."""

    def __init__(self, settings: SearchSettings, cost_model: CostModel, count_running: bool = True):
        self.settings = settings
        self.cost_model = cost_model
        # running trials only hold budget where a heartbeat tells live ones from dead ones
        self.count_running = count_running
        # no pruning in a grid: exact Shapley values need every config's final Dice
        self.rule = (CheaperPercentileRule(settings.prune_percentile, settings.prune_startup,
                                           n_warmup_epochs=max(1, settings.trial.epochs // 2))
                     if settings.prune and not settings.grid else None)
        self._datamodule = None

    @cached_property
    def teacher(self):
        """The frozen full-precision net every trial starts from and distils from (None: random init)."""
        if self.settings.trial.teacher is None:
            return None
        from ..distill import load_teacher

        return load_teacher(self.settings.trial.teacher)

    def datamodule(self):
        """One data module per worker process: its samples are checked and split once, not per trial."""
        if self._datamodule is None:
            from ..data import SegmentationDataModule

            ts = self.settings.trial
            data_kwargs = {"layout": ts.layout} if ts.layout else {}
            self._datamodule = SegmentationDataModule(data_root=ts.data_root, size=ts.size, batch_size=ts.batch_size,
                                                      num_workers=ts.num_workers, seed=ts.seed, augment=ts.augment,
                                                      **data_kwargs)
        return self._datamodule

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        taken = [t for t in others if t.state in FINISHED or (self.count_running and t.number < trial.number)]
        return len(taken) >= self.settings.effective_budget

    @staticmethod
    def _duplicate_of(trial: optuna.Trial) -> int | None:
        """The lower-numbered live copy of this queued config, if any (the lowest number runs it)."""
        k = trial.user_attrs.get("cost_aware_k")
        if k is None:
            return None
        live = (TrialState.WAITING, TrialState.RUNNING, *FINISHED)  # a FAIL copy's retry must run
        return next((t.number for t in trial.study.get_trials(deepcopy=False, states=live)
                     if t.number < trial.number and t.user_attrs.get("cost_aware_k") == k), None)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        import lightning.pytorch as pl  # heavy: loaded in the process that trains

        from ..callbacks import MBUCallback
        from ..module import SegmentationModule

        if self._is_surplus(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()  # back to the worker loop, which waits while the budget is in flight
            raise SurplusTrial(f"trial {trial.number} is beyond the budget of {self.settings.effective_budget}")
        if (first := self._duplicate_of(trial)) is not None:
            trial.set_user_attr("surplus", True)
            raise DuplicateTrial(f"trial {trial.number} repeats the queued config of trial {first}")
        s, ts = self.settings, self.settings.trial
        config = s.config_of({n: trial.suggest_categorical(n, s.choices) for n in s.layers})
        cost = float(self.cost_model.config_binary_ops(config, s.encoding))
        trial.set_user_attr("config", str(config))
        trial.set_user_attr(COST_ATTR, cost)
        trial.set_user_attr("n_masked", len(config.layers_with("masked")))
        trial.set_user_attr(CURVE_ATTR, [])  # a retried trial must not inherit the dead one's curve
        trial.set_user_attr("worker", _worker_label())

        pl.seed_everything(ts.seed, workers=True, verbose=False)  # same init and data order for every config
        module = SegmentationModule(QuantSpec(config, t=ts.t), base=ts.base, lr=ts.lr, teacher=self.teacher,
                                    kd_weight=ts.kd_weight)
        reporter = DiceReporter(trial, cost, None if trial.user_attrs.get("cost_aware_k") is not None else self.rule)
        schedule = MBUCallback(log_weight_stats=False, sign_gradient=ts.sign_gradient,  # the module's own spec
                               mask_schedule="linear" if ts.warmup_epochs else "constant",
                               warmup_epochs=ts.warmup_epochs)
        trainer = pl.Trainer(
            max_epochs=ts.epochs, accelerator=ts.accelerator, devices=1, precision=ts.precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_train_batches=ts.limit_train_batches,
            limit_val_batches=ts.limit_val_batches, callbacks=[schedule, reporter],
        )
        datamodule = self.datamodule()
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        trial.set_user_attr("train_seconds", time.perf_counter() - start)
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"val/dice {reporter.curve[-1]:.4f} at epoch {reporter.pruned_at} is in the "
                                     f"bottom {self.rule.percentile:g}% of cheaper trials")
        if not reporter.curve:
            raise ValueError("search: training ran no validation epoch; check limit_val_batches and the data")
        return reporter.curve[-1], cost


def _worker_label() -> str:
    """Which host, process and GPU ran a trial: several hosts may share one study."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" gpu {gpu}" if gpu else "")
