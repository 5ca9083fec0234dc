"""Figures of the search: per-layer costs (paper Fig. 4), Shapley bars (Fig. 3c), the Pareto front (Fig. 7)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import LAYER_NAMES, PAPER_NAMES
from ..files import atomic_path
from .cost import CostModel
from .shapley import ShapleyResult


def _figure(figsize: tuple[float, float]):
    """A figure that only writes files, imported when drawn: importing the search must not need matplotlib.

    ``Figure`` without pyplot needs no backend or display and leaves the caller's pyplot state alone.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the suffix is kept, so savefig still picks the format from it
        fig.savefig(tmp, dpi=120)
    return path


def plot_cost(cost_model: CostModel, path: str | Path) -> Path:
    """Ops and parameters per layer (Fig. 4), transposed convs in red."""
    labels = [PAPER_NAMES[n] for n in LAYER_NAMES]
    colors = ["tab:red" if n.startswith("up_ct") else "tab:blue" for n in LAYER_NAMES]
    fig = _figure((11, 3.8))
    axes = fig.subplots(1, 2)
    for ax, values, title in (
        (axes[0], [cost_model.layers[n].ops for n in LAYER_NAMES], "operations (mult + add)"),
        (axes[1], [cost_model.layers[n].params for n in LAYER_NAMES], "parameters"),
    ):
        ax.bar(labels, values, color=colors)
        ax.set_yscale("log")
        ax.set_title(f"{title}, {cost_model.size[0]}x{cost_model.size[1]}, base {cost_model.base}")
        ax.tick_params(axis="x", rotation=60)
    return _save(fig, path)


def plot_shapley(results: Sequence[ShapleyResult], path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Bars of each layer's Shapley value with one-standard-error bars, each labelled "value ± se"; one group
    per result."""
    players = results[0].players
    width = 0.8 / len(results)
    x = np.arange(len(players))
    fig = _figure((max(6, 0.7 * len(players)), 3.8))
    ax = fig.subplots()
    for j, r in enumerate(results):
        se = np.nan_to_num(r.se, nan=0.0)
        label = labels[j] if labels else r.method
        xs = x + (j - (len(results) - 1) / 2) * width
        ax.bar(xs, r.values, width, yerr=se, capsize=2, label=label)
        for xi, v, e, raw in zip(xs, r.values, se, r.se):
            if np.isfinite(v):  # the standard error beside its value, not only as a whisker
                text = f"{v:+.3f}\n" + (f"±{raw:.3f}" if np.isfinite(raw) else "± n/a")
                ax.annotate(text, (xi, v + (e if v >= 0 else -e)), ha="center",
                            va="bottom" if v >= 0 else "top", fontsize=6, xytext=(0, 2 if v >= 0 else -2),
                            textcoords="offset points")
    ax.axhline(0, color="black", lw=0.6)
    ax.margins(y=0.2)  # room for the labels
    ax.set_xticks(x, [PAPER_NAMES.get(p, p) for p in players], rotation=60)
    ax.set_ylabel("Shapley value (Dice gain from masking)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pareto(trials: Sequence[dict], front: Sequence[dict], path: str | Path) -> Path:
    """Dice against cost for every finished trial, the front as a step line, cost-aware configs marked."""
    fig = _figure((6.5, 4.2))
    ax = fig.subplots()
    done = [t for t in trials if t["dice"] is not None]
    ax.scatter([t["cost"] / 1e9 for t in done], [t["dice"] for t in done], s=14, c="tab:gray", label="trials")
    aware = [t for t in done if t.get("cost_aware_k") is not None]
    ax.scatter([t["cost"] / 1e9 for t in aware], [t["dice"] for t in aware], s=22, c="tab:orange",
               label="cost-aware (k cheapest masked)")
    for t in aware:
        ax.annotate(str(t["cost_aware_k"]), (t["cost"] / 1e9, t["dice"]), fontsize=7, xytext=(2, 2),
                    textcoords="offset points")
    pts = sorted((t["cost"] / 1e9, t["dice"]) for t in front)
    if pts:
        ax.step(*zip(*pts), where="post", color="tab:red", label="Pareto front")
    ax.set_xlabel("config cost (G binary ops)")
    ax.set_ylabel("validation Dice")
    ax.legend(fontsize=8)
    return _save(fig, path)
