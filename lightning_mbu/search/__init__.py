"""Cost-aware masking: layer costs (eq. 2), Shapley values of masking, and the Optuna search."""

from importlib import import_module

from .cost import CostModel, LayerCost
from .shapley import ShapleyResult, estimate_shapley, shapley_exact, shapley_permutation, shapley_regression

# The sampler needs optuna, which inference-only machines may lack; cost and Shapley don't.
_LAZY = {"ShapleyCostSampler": "lightning_mbu.search.sampler"}

__all__ = [
    "CostModel", "LayerCost", "ShapleyCostSampler", "ShapleyResult",
    "estimate_shapley", "shapley_exact", "shapley_permutation", "shapley_regression",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_mbu.search' has no attribute {name!r}")
