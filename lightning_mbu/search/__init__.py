"""Cost-aware masking: layer costs (eq. 2), Shapley values of masking, and the Optuna search."""

from .cost import CostModel, LayerCost
from .sampler import ShapleyCostSampler
from .shapley import ShapleyResult, estimate_shapley, shapley_exact, shapley_permutation, shapley_regression

__all__ = [
    "CostModel", "LayerCost", "ShapleyCostSampler", "ShapleyResult",
    "estimate_shapley", "shapley_exact", "shapley_permutation", "shapley_regression",
]
