"""ShapleyCostSampler: propose configs that mask the layers with the best Dice gain per cost.

Why a custom sampler rather than priors on a stock one: Optuna's TPE and NSGA-II see 12
unrelated categorical choices and learn, trial by trial, what the paper's finding gives
for free: each layer's gain from masking is roughly additive and comparable, while the
costs differ by orders of magnitude, so the Pareto front is (to first order) "mask the
layers with the highest gain per cost, up to a cost budget". Independent per-layer
priors cannot express that: whether a layer should be masked depends on the budget and
on the other layers' ratios. With a budget of ~50 trials the data support an additive
model (13 coefficients) well, so this sampler:

1. estimates each layer's Shapley value phi_i (its mean Dice gain from masking) by
   regression on the finished trials (``shapley.shapley_regression``), with a standard
   error;
2. draws phi_i ~ N(estimate, se^2) (Thompson sampling: uncertain layers get explored);
3. draws a cost budget uniformly between the all-binary and the all-masked config;
4. masks layers greedily by drawn phi_i / masking cost_i while they fit the budget
   (the fractional-knapsack answer for an additive game), so successive trials spread
   along the cost axis, i.e. along the front;
5. skips configs already evaluated, queued or running: when the drawn config was seen,
   it draws again and flips a growing number of random layers, so the search moves to
   the nearest unseen configs; with probability ``explore``, or before ``n_startup``
   trials finished, it samples each layer uniformly at random.

Parameters outside the binary/masked search space (k-bit choices, anything else the
objective suggests) go to the wrapped ``fallback`` sampler (NSGA-II by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from .shapley import shapley_regression

BINARY_MASKED = ("binary", "masked")


class ShapleyCostSampler(BaseSampler):
    """Thompson-sampled greedy masking by Shapley value per masking cost.

    Args:
        masking_cost: extra cost of masking each searched layer (its parameter name), e.g.
            ``CostModel.masking_cost()``; the searched layers are its keys.
        choices: the modes the objective suggests per layer; anything but binary/masked
            leaves every choice to the fallback.
        dice_objective: index of the Dice value in the trial values.
        n_startup: finished trials needed before the Shapley estimate is used.
        explore: probability of a uniformly random config instead.
        max_tries: draws before giving up on finding a config not seen yet.
        fallback: sampler for every other parameter (NSGA-II if None).
        seed: for the sampler's own draws.
    """

    def __init__(
        self,
        masking_cost: Mapping[str, float],
        choices: Sequence[str] = BINARY_MASKED,
        dice_objective: int = 0,
        n_startup: int = 5,
        explore: float = 0.1,
        max_tries: int = 50,
        fallback: BaseSampler | None = None,
        seed: int | None = None,
    ):
        if not masking_cost:
            raise ValueError("ShapleyCostSampler needs the masking cost of at least one layer")
        if min(masking_cost.values()) <= 0:
            raise ValueError(f"masking costs must be positive, got {dict(masking_cost)}")
        self.layers = tuple(masking_cost)
        self.cost = np.array([float(masking_cost[n]) for n in self.layers])
        self.choices = tuple(choices)
        self.dice_objective = dice_objective
        self.n_startup = n_startup
        self.explore = explore
        self.max_tries = max_tries
        self.fallback = fallback or optuna.samplers.NSGAIISampler(seed=seed)
        self._rng = np.random.default_rng(seed)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self.fallback.reseed_rng()

    # -- relative sampling over the binary/masked layers ------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self.choices != BINARY_MASKED:
            return {}
        dist = CategoricalDistribution(BINARY_MASKED)
        return {n: dist for n in self.layers}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False)
        seen = {self._key(t.params) for t in trials if all(n in t.params for n in self.layers)}
        seen |= {self._key(t.system_attrs.get("fixed_params", {})) for t in trials
                 if t.state == TrialState.WAITING}
        finished = [t for t in trials if t.state == TrialState.COMPLETE
                    and all(n in t.params for n in self.layers) and t.values is not None]
        phi = se = None
        if len(finished) >= self.n_startup:
            x = np.array([[t.params[n] == "masked" for n in self.layers] for t in finished], dtype=float)
            y = np.array([t.values[self.dice_objective] for t in finished])
            fit = shapley_regression(x, y, self.layers, order=1)
            # layers never varied get the mean gain of the others; where the fit has no residual
            # degrees of freedom, the spread of Dice stands in for the standard error
            known = np.isfinite(fit.values)
            phi = np.where(known, fit.values, fit.values[known].mean() if known.any() else 0.0)
            se = np.where(np.isfinite(fit.se), fit.se, np.std(y) + 1e-6)
        n = len(self.layers)
        for attempt in range(self.max_tries):
            if phi is None or self._rng.random() < self.explore:
                masked = self._rng.random(n) < 0.5
            else:
                masked = self._greedy(self._rng.normal(phi, se))
            # once the model is sure, its proposals repeat: move ever further from them
            flips = self._rng.choice(n, attempt * n // self.max_tries, replace=False)
            masked[flips] = ~masked[flips]
            params = {n: ("masked" if m else "binary") for n, m in zip(self.layers, masked)}
            if self._key(params) not in seen:
                return params
        return {}  # every draw was taken: let the fallback decide

    def _greedy(self, phi: np.ndarray) -> np.ndarray:
        budget = self._rng.uniform(0, self.cost.sum())
        masked = np.zeros(len(phi), dtype=bool)
        spent = 0.0
        for i in np.argsort(-phi / self.cost):
            if phi[i] <= 0:
                break
            if spent + self.cost[i] <= budget:
                masked[i], spent = True, spent + self.cost[i]
        return masked

    def _key(self, params: Mapping[str, str]) -> tuple:
        return tuple(params.get(n) for n in self.layers)

    # -- everything else goes to the fallback ---------------------------------------------
    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution):
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.fallback.after_trial(study, trial, state, values)
