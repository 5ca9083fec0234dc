"""Shapley estimators against games whose values are known in closed form."""

from itertools import combinations

import numpy as np
import pytest

from lightning_mbu.config import LayerConfig
from lightning_mbu.search.shapley import (
    ShapleyResult,
    estimate_shapley,
    shapley_exact,
    shapley_permutation,
    shapley_regression,
)

PLAYERS = ("p0", "p1", "p2", "p3", "p4", "p5")
BETA = dict(zip(PLAYERS, [0.04, 0.01, -0.02, 0.06, 0.0, 0.03]))
PAIRS = {("p0", "p1"): 0.05, ("p2", "p3"): -0.04}
TRIPLE = (("p0", "p1", "p4"), 0.09)


def additive(s):
    return 0.5 + sum(BETA[p] for p in s)


def interacting(s):
    v = additive(s) + sum(g for pair, g in PAIRS.items() if set(pair) <= s)
    return v + (TRIPLE[1] if set(TRIPLE[0]) <= s else 0.0)


def true_interacting():
    """Shapley of a game given by its Moebius terms: each term split equally among its members."""
    phi = dict(BETA)
    for terms in (PAIRS.items(), [TRIPLE]):
        for members, m in terms:
            for p in members:
                phi[p] += m / len(members)
    return np.array([phi[p] for p in PLAYERS])


def full_table(value):
    return {frozenset(c): value(frozenset(c)) for r in range(len(PLAYERS) + 1) for c in combinations(PLAYERS, r)}


def brute_restricted(value, k_sizes):
    """Mean marginal gain over coalition sizes 0..k_sizes-1, each size weighted equally."""
    out = []
    for p in PLAYERS:
        others = [q for q in PLAYERS if q != p]
        per_size = [np.mean([value(frozenset(s) | {p}) - value(frozenset(s)) for s in combinations(others, k)])
                    for k in range(k_sizes)]
        out.append(np.mean(per_size))
    return np.array(out)


def masks(table):
    x = np.array([[p in s for p in PLAYERS] for s in table], dtype=float)
    return x, np.array(list(table.values()))


def test_exact_recovers_additive_and_interacting_games():
    np.testing.assert_allclose(shapley_exact(full_table(additive), PLAYERS).values, list(BETA.values()), atol=1e-12)
    r = shapley_exact(full_table(interacting), PLAYERS)
    np.testing.assert_allclose(r.values, true_interacting(), atol=1e-12)
    assert r.method == "exact" and np.all(r.se == 0)
    # efficiency: the values add up to v(all) - v(none)
    assert r.values.sum() == pytest.approx(interacting(frozenset(PLAYERS)) - interacting(frozenset()))


def test_exact_propagates_repeated_run_noise():
    rng = np.random.default_rng(0)
    table = {s: [v + rng.normal(0, 0.01) for _ in range(3)] for s, v in full_table(additive).items()}
    r = shapley_exact(table, PLAYERS)
    assert np.all(r.se > 0)
    assert np.all(np.abs(r.values - list(BETA.values())) < 4 * r.se)


def test_exact_refuses_an_incomplete_table():
    table = full_table(additive)
    del table[frozenset({"p0", "p2"})]
    with pytest.raises(ValueError, match="missing"):
        shapley_exact(table, PLAYERS)


def test_regression_recovers_additive_game_from_a_sample():
    rng = np.random.default_rng(1)
    x = rng.random((30, len(PLAYERS))) < 0.5
    y = np.array([additive(frozenset(p for p, m in zip(PLAYERS, row) if m)) for row in x])
    r = shapley_regression(x, y, PLAYERS, order=1)
    np.testing.assert_allclose(r.values, list(BETA.values()), atol=1e-9)
    noisy = shapley_regression(x, y + rng.normal(0, 0.01, len(y)), PLAYERS, order=1)
    assert np.all(np.isfinite(noisy.se)) and np.all(noisy.se > 0)
    assert np.all(np.abs(noisy.values - list(BETA.values())) < 4 * noisy.se)


def test_regression_order_matches_the_interactions():
    x, y = masks(full_table(interacting))
    # order 3 holds every Moebius term of the game: exact
    np.testing.assert_allclose(shapley_regression(x, y, PLAYERS, order=3).values, true_interacting(), atol=1e-9)
    # order 1 misses the interactions; its stated error must cover the miss
    r = shapley_regression(x, y, PLAYERS, order=1)
    assert np.all(np.abs(r.values - true_interacting()) < 3 * r.se)


def test_regression_marks_never_varied_layers_unknown():
    x = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=float)
    r = shapley_regression(x, np.array([0.1, 0.2, 0.11, 0.21, 0.19]), ("a", "b", "c"))
    assert np.isfinite(r.values[0]) and np.isnan(r.values[1]) and np.isnan(r.values[2])


def test_permutation_within_its_stated_error():
    r = shapley_permutation(interacting, PLAYERS, n_permutations=300, seed=3)
    truth = true_interacting()
    assert r.method == "permutation"
    varying = r.se > 1e-9  # players whose gain never changes have a zero (float-noise) error
    assert np.all(np.abs(r.values - truth)[varying] < 4 * r.se[varying])
    np.testing.assert_allclose(r.values[~varying], truth[~varying], atol=1e-12)  # constant gains: exact


def test_restricted_view_all_estimators():
    k_sizes = 4  # coalitions with fewer than 5 masked layers
    truth = brute_restricted(interacting, k_sizes)
    np.testing.assert_allclose(shapley_exact(full_table(interacting), PLAYERS, max_masked=5).values, truth,
                               atol=1e-12)
    x, y = masks(full_table(interacting))
    np.testing.assert_allclose(shapley_regression(x, y, PLAYERS, order=3, max_masked=5).values, truth, atol=1e-9)
    r = shapley_permutation(interacting, PLAYERS, n_permutations=400, seed=4, max_masked=5)
    ok = r.se > 1e-9
    assert np.all(np.abs(r.values - truth)[ok] < 4 * r.se[ok])
    # an additive game has the same value in every view
    np.testing.assert_allclose(shapley_exact(full_table(additive), PLAYERS, max_masked=3).values,
                               list(BETA.values()), atol=1e-12)


def test_estimate_shapley_on_configs_exact_for_a_grid_subset():
    players = ("up_ct3", "up_ct4", "down1")
    background = LayerConfig.parse("BBBBMMBBBBBB").as_dict()  # up_ct1, up_ct2 masked in every run
    gain = {"up_ct3": 0.03, "up_ct4": 0.02, "down1": -0.01}
    configs, dice = [], []
    for r in range(len(players) + 1):
        for s in combinations(players, r):
            configs.append(LayerConfig.parse({**background, **{p: "masked" for p in s}}))
            dice.append(0.7 + sum(gain[p] for p in s) + (0.04 if {"up_ct3", "up_ct4"} <= set(s) else 0))
    configs.append(LayerConfig.uniform("masked"))  # another background: not part of this game
    dice.append(0.0)
    r = estimate_shapley(configs, dice, players=players)
    assert r.method == "exact" and r.n_evaluations == 2 ** len(players)
    np.testing.assert_allclose(r.values, [0.05, 0.04, -0.01], atol=1e-12)
    # a partial set falls back to the regression estimate
    partial = estimate_shapley(configs[:6], dice[:6], players=players)
    assert partial.method.startswith("regression")


def test_result_round_trips_through_json_dict():
    r = shapley_regression(np.eye(3), np.array([0.1, 0.2, 0.3]), ("a", "b", "c"))
    back = ShapleyResult.from_dict(r.as_dict())
    np.testing.assert_allclose(back.values, r.values)
    assert back.players == r.players and back.method == r.method
    with pytest.raises(ValueError, match="unknown layer"):
        estimate_shapley(["B" * 12], [0.5], players=("nope",))
