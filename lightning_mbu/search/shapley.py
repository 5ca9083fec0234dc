"""Shapley values of masking each layer: its average marginal gain in Dice.

The game: players are layers, a coalition S is the set of masked layers (the rest keep
the base mode, binary), v(S) is the validation Dice of that config. Three estimators:

- ``shapley_exact``: from a table holding every coalition of the players (a grid sweep);
  phi is a fixed linear combination of the table, so its standard error is zero unless
  configs were evaluated several times, in which case the pooled run-to-run variance
  propagates through the same weights.
- ``shapley_regression``: from any set of evaluated configs (a search). Fits a k-additive
  game (Moebius coefficients of order <= k) by least squares; the Shapley value of such
  a game is exact in closed form (phi_i = sum over T containing i of m(T) / |T|), so the
  only error is the fit's, which OLS propagates to a standard error. Exact when the true
  game has no interactions above order k.
- ``shapley_permutation``: Monte-Carlo over random orders for a callable value function,
  standard error from the spread of marginal contributions.

``max_masked`` gives the paper's restricted view (Fig. 3c): only coalitions with fewer
than ``max_masked`` masked layers count, i.e. each player's marginal gain averaged over
coalition sizes 0 .. K-1 (K = max_masked - 1) with equal weight per size, as Shapley
weights every size 0 .. n-1 equally.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from ..config import LAYER_NAMES, LayerConfig


@dataclass(frozen=True)
class ShapleyResult:
    players: tuple[str, ...]
    values: np.ndarray
    se: np.ndarray  # NaN where the data leave no degrees of freedom to estimate it
    method: str  # "exact", "regression-order<k>" or "permutation"
    n_evaluations: int
    max_masked: int | None = None

    def as_dict(self) -> dict:
        def num(x):
            return None if not np.isfinite(x) else float(x)

        return {
            "method": self.method, "n_evaluations": self.n_evaluations, "max_masked": self.max_masked,
            "values": {p: num(v) for p, v in zip(self.players, self.values)},
            "se": {p: num(s) for p, s in zip(self.players, self.se)},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ShapleyResult:
        players = tuple(d["values"])

        def arr(key):
            return np.array([np.nan if d[key][p] is None else d[key][p] for p in players], dtype=float)

        return cls(players, arr("values"), arr("se"), d["method"], d["n_evaluations"], d["max_masked"])


def _sizes_counted(n: int, max_masked: int | None) -> int:
    """How many coalition sizes (0 .. K-1) the marginal gains are averaged over."""
    if max_masked is None:
        return n
    if max_masked < 2:
        raise ValueError(f"max_masked must be at least 2 (one masked layer), got {max_masked}")
    return min(n, max_masked - 1)


def _size_weight(n: int, size: int, k_sizes: int) -> float:
    """Weight of one coalition of ``size`` (without the player) in the player's value."""
    return 1.0 / (k_sizes * comb(n - 1, size)) if size < k_sizes else 0.0


def shapley_exact(
    table: Mapping[frozenset, float | Sequence[float]],
    players: Sequence[str],
    max_masked: int | None = None,
) -> ShapleyResult:
    """Exact values from v(S) for every subset S of ``players`` (several values per S allowed)."""
    n = len(players)
    k_sizes = _sizes_counted(n, max_masked)
    means, counts, resid = {}, {}, []
    for s, v in table.items():
        vals = np.atleast_1d(np.asarray(v, dtype=float))
        means[frozenset(s)], counts[frozenset(s)] = vals.mean(), len(vals)
        resid.extend(vals - vals.mean())
    needed = [frozenset(c) for r in range(n + 1) for c in combinations(players, r)
              if r <= k_sizes]  # coalitions with the player have size <= K
    missing = [s for s in needed if s not in means]
    if missing:
        raise ValueError(f"exact Shapley needs every coalition; {len(missing)} of {len(needed)} missing, "
                         f"e.g. {sorted(missing[0]) or 'none masked'}")
    n_runs = sum(counts.values())
    dof = n_runs - len(means)
    noise_var = float(np.sum(np.square(resid)) / dof) if dof > 0 else 0.0
    values, var = np.zeros(n), np.zeros(n)
    for i, p in enumerate(players):
        for s in needed:
            if p in s:
                w = _size_weight(n, len(s) - 1, k_sizes)
            else:
                w = -_size_weight(n, len(s), k_sizes)
            values[i] += w * means[s]
            var[i] += w * w * noise_var / counts[s]
    return ShapleyResult(tuple(players), values, np.sqrt(var), "exact", n_runs, max_masked)


def _features(x: np.ndarray, order: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Moebius basis: a column per subset T with |T| <= order, 1 where all of T are masked."""
    n = x.shape[1]
    terms = [t for r in range(order + 1) for t in combinations(range(n), r)]
    cols = [np.prod(x[:, list(t)], axis=1) if t else np.ones(len(x)) for t in terms]
    return np.stack(cols, axis=1).astype(float), terms


def shapley_regression(
    x: np.ndarray,
    y: np.ndarray,
    players: Sequence[str],
    order: int | None = None,
    max_masked: int | None = None,
    ridge: float = 1e-6,
) -> ShapleyResult:
    """Shapley values of the k-additive game fitted to ``y`` (Dice) over masks ``x`` (n_runs x p).

    ``order=None`` takes the highest order (at most 2) that leaves at least 3 residual
    degrees of freedom, else order 1. With ``max_masked`` only runs with fewer masked
    layers are used, and phi_i = sum_T m(T) c(|T|) with c the restricted-view weights.
    Players masked in every run or in none get NaN: the data say nothing about them.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(players) or len(x) != len(y):
        raise ValueError(f"shapley_regression: x must be (runs, {len(players)}) and y (runs,), "
                         f"got {x.shape} and {y.shape}")
    if max_masked is not None:
        keep = x.sum(axis=1) < max_masked
        x, y = x[keep], y[keep]
    n = len(players)
    if len(y) == 0:
        raise ValueError("shapley_regression: no evaluated configs to fit")
    # a layer that is masked in all runs or in none has no estimable effect: fit the others
    varied = [i for i in range(n) if 0 < x[:, i].sum() < len(x)]
    if order is None:
        order = 2 if len(y) >= 1 + len(varied) + comb(len(varied), 2) + 3 else 1
    feats, terms = _features(x[:, varied], order)
    q = feats.shape[1]
    gram = feats.T @ feats
    dof = len(y) - q
    identified = dof > 0 and np.linalg.matrix_rank(gram) == q
    # under-determined: a tiny ridge picks the minimum-norm fit, with no error estimate
    inv = np.linalg.inv(gram if identified else gram + ridge * np.eye(q))
    coef = inv @ feats.T @ y
    resid = y - feats @ coef
    k_sizes = _sizes_counted(n, max_masked)
    # a term T of size t adds m(T) to player i's marginal gain exactly when the other t-1
    # members are already masked; averaged over the counted coalition sizes that is:
    share = {t: np.mean([comb(s, t - 1) / comb(n - 1, t - 1) for s in range(k_sizes)]) if t else 0.0
             for t in range(order + 1)}
    a = np.zeros((len(varied), q))
    for j, t in enumerate(terms):
        for i in t:
            a[i, j] = share[len(t)]
    values, se = np.full(n, np.nan), np.full(n, np.nan)
    values[varied] = a @ coef
    if identified:
        cov = inv * float(resid @ resid) / dof
        se[varied] = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", a, cov, a), 0, None))
    return ShapleyResult(tuple(players), values, se, f"regression-order{order}", len(y), max_masked)


def shapley_permutation(
    value: Callable[[frozenset], float],
    players: Sequence[str],
    n_permutations: int = 200,
    seed: int | None = 0,
    max_masked: int | None = None,
) -> ShapleyResult:
    """Monte-Carlo Shapley: marginal gains along random orders of ``players``.

    With ``max_masked`` each order is followed only over its first K positions, so every
    player's samples come from coalition sizes 0 .. K-1, uniformly, as the restricted
    view weights them.
    """
    n = len(players)
    k_sizes = _sizes_counted(n, max_masked)
    rng = np.random.default_rng(seed)
    cache: dict[frozenset, float] = {}

    def v(s: frozenset) -> float:
        if s not in cache:
            cache[s] = float(value(s))
        return cache[s]

    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_permutations):
        order = [players[i] for i in rng.permutation(n)]
        coalition = frozenset()
        prev = v(coalition)
        for p in order[:k_sizes]:
            coalition = coalition | {p}
            cur = v(coalition)
            samples[p].append(cur - prev)
            prev = cur
    values = np.array([np.mean(samples[p]) if samples[p] else np.nan for p in players])
    se = np.array([np.std(samples[p], ddof=1) / np.sqrt(len(samples[p])) if len(samples[p]) > 1 else np.nan
                   for p in players])
    return ShapleyResult(tuple(players), values, se, "permutation", len(cache), max_masked)


def estimate_shapley(
    configs: Iterable[str | LayerConfig],
    dice: Iterable[float],
    players: Sequence[str] = LAYER_NAMES,
    mode: str = "masked",
    max_masked: int | None = None,
) -> ShapleyResult:
    """Shapley values of masking each of ``players`` from evaluated configs and their Dice.

    Exact when the configs hold every coalition of the players (others fixed, e.g. a grid
    sweep over a subset), a regression estimate otherwise. Configs whose layers outside
    ``players`` differ from the most common setting are left out, since they belong to a
    different game.
    """
    for p in players:
        if p not in LAYER_NAMES:
            raise ValueError(f"unknown layer {p!r}; valid layers: {', '.join(LAYER_NAMES)}")
    others = [n for n in LAYER_NAMES if n not in players]
    rows = [(LayerConfig.parse(c), float(d)) for c, d in zip(configs, dice)]
    rows = [(c, d) for c, d in rows if np.isfinite(d)]
    if not rows:
        raise ValueError("estimate_shapley: no evaluated configs with a finite Dice")
    backgrounds = defaultdict(int)
    for c, _ in rows:
        backgrounds[tuple(c[n] for n in others)] += 1
    background = max(backgrounds, key=backgrounds.get)
    rows = [(c, d) for c, d in rows if tuple(c[n] for n in others) == background]
    table: dict[frozenset, list[float]] = defaultdict(list)
    for c, d in rows:
        table[frozenset(p for p in players if c[p] == mode)].append(d)
    try:
        return shapley_exact(table, players, max_masked)
    except ValueError:
        pass  # not a full table: fall back to the regression estimate
    x = np.array([[c[p] == mode for p in players] for c, _ in rows], dtype=float)
    y = np.array([d for _, d in rows])
    return shapley_regression(x, y, players, max_masked=max_masked)
