"""Pruning for a two-objective (Dice, cost) study, and the Lightning callback that drives it.

Optuna's pruners read ``trial.report``, which multi-objective studies refuse. A config's
cost is known before it trains, so the question a pruner must answer is simpler: can
this trial still reach the Pareto front? ``CheaperPercentileRule`` says no when, at the
same epoch, its validation Dice is below a low percentile of the finished trials that cost
no more (Optuna's percentile pruner restricted to the configs that would dominate it). The Dice curve is
kept in the ``val_dice`` user attribute, one value per epoch, for this rule and for the
summary.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import optuna
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

CURVE_ATTR = "val_dice"
COST_ATTR = "cost"


class CheaperPercentileRule:
    """Prune when Dice at an epoch is below a percentile of finished cheaper-or-equal trials.

    Args:
        percentile: 25 prunes a trial in the bottom quarter of the configs that cost no more;
            early-epoch Dice of short trials is noisy, so the default is lenient.
        n_startup: cheaper finished trials needed before anything is pruned.
        n_warmup_epochs: epochs that always run before pruning can start.
    """

    def __init__(self, percentile: float = 25.0, n_startup: int = 5, n_warmup_epochs: int = 1):
        if not 0 < percentile < 100:
            raise ValueError(f"pruning percentile must lie in (0, 100), got {percentile}")
        self.percentile = percentile
        self.n_startup = n_startup
        self.n_warmup_epochs = n_warmup_epochs

    def should_prune(self, study: optuna.Study, cost: float, epoch: int, dice: float) -> bool:
        if epoch < self.n_warmup_epochs:
            return False
        refs = [
            t.user_attrs[CURVE_ATTR][epoch]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(COST_ATTR, float("inf")) <= cost and len(t.user_attrs.get(CURVE_ATTR, ())) > epoch
        ]
        return len(refs) >= self.n_startup and dice < np.percentile(refs, self.percentile)


class DiceReporter(Callback):
    """Record ``val/dice`` in the trial after every validation and stop training when pruned.

    Lightning is stopped cleanly (``trainer.should_stop``); the caller raises
    ``optuna.TrialPruned`` once ``fit`` returns, when ``pruned_at`` is set.
    """

    def __init__(self, trial: optuna.Trial, cost: float, rule: CheaperPercentileRule | None, monitor: str = "val/dice"):
        self.trial, self.cost, self.rule, self.monitor = trial, cost, rule, monitor
        self.curve: list[float] = []
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(f"search: the module logged no {self.monitor!r}; logged: "
                             f"{', '.join(trainer.callback_metrics) or 'nothing'}")
        dice = float(trainer.callback_metrics[self.monitor])
        self.curve.append(dice)
        self.trial.set_user_attr(CURVE_ATTR, self.curve)
        epoch = len(self.curve) - 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs - 1
        if self.rule is not None and not last and self.rule.should_prune(self.trial.study, self.cost, epoch, dice):
            self.pruned_at = epoch
            trainer.should_stop = True
