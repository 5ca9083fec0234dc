"""The search's results: Pareto front, Shapley values, cost-aware configs, best config per cost bracket.

``summarize`` reads everything from the study (so it works on a finished, resumed or
still-running study alike); ``write_summary`` puts the JSON, CSV tables and figures in
the output folder.
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import PAPER_NAMES
from ..files import atomic_write, writable_dir, write_json
from .cost import CostModel
from .plots import plot_pareto, plot_shapley
from .pruning import COST_ATTR, CURVE_ATTR
from .shapley import ShapleyResult, estimate_shapley
from .settings import SearchSettings
from .study import cost_aware_params

#: the paper's restricted view of Fig. 3c: coalitions with fewer than five masked layers
PAPER_MAX_MASKED = 5
TABLE_FIELDS = ("number", "state", "config", "dice", "cost", "n_masked", "cost_aware_k")


def trial_rows(study: optuna.Study, settings: SearchSettings, cost_model: CostModel) -> list[dict]:
    aware = {str(settings.config_of(p)): k for k, p in enumerate(cost_aware_params(settings, cost_model))}
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not all(n in t.params for n in settings.layers):
            continue  # asked but never got its config (e.g. a surplus trial)
        config = str(settings.config_of(t.params))
        cost = t.values[1] if t.values else t.user_attrs.get(COST_ATTR)
        rows.append({
            "number": t.number, "state": t.state.name, "config": config,
            "dice": t.values[0] if t.state == TrialState.COMPLETE and t.values else None,
            "cost": cost, "n_masked": config.count("M"), "cost_aware_k": aware.get(config),
            "val_dice": t.user_attrs.get(CURVE_ATTR, []), "train_seconds": t.user_attrs.get("train_seconds"),
        })
    return rows


def best_per_bracket(rows: list[dict], low: float, high: float, n: int = 4) -> list[dict]:
    """The best-Dice finished config in each of ``n`` equal cost brackets between ``low`` and ``high``."""
    width = (high - low) / n
    members: list[list[dict]] = [[] for _ in range(n)]
    for r in rows:
        if r["dice"] is not None:
            b = int((r["cost"] - low) / width) if width > 0 else 0
            members[min(max(b, 0), n - 1)].append(r)
    out = []
    for b, inside in enumerate(members):
        best = max(inside, key=lambda r: r["dice"], default=None)
        out.append({"bracket": [low + b * width, low + (b + 1) * width], "n_trials": len(inside),
                    "best": None if best is None else {k: best[k] for k in TABLE_FIELDS}})
    return out


def _shapley(rows: list[dict], settings: SearchSettings) -> dict:
    done = [r for r in rows if r["dice"] is not None]
    out = {}
    for key, max_masked in (("all", None), (f"fewer_than_{PAPER_MAX_MASKED}_masked", PAPER_MAX_MASKED)):
        try:
            out[key] = estimate_shapley([r["config"] for r in done], [r["dice"] for r in done],
                                        players=settings.layers, max_masked=max_masked)
        except ValueError as e:
            out[key] = str(e)
    return out


def summarize(study: optuna.Study, settings: SearchSettings, cost_model: CostModel, brackets: int = 4) -> dict:
    rows = trial_rows(study, settings, cost_model)
    front_numbers = {t.number for t in study.best_trials} if any(r["dice"] is not None for r in rows) else set()
    front = sorted((r for r in rows if r["number"] in front_numbers), key=lambda r: r["cost"])
    background = settings.config_of({n: "binary" for n in settings.layers})
    low = cost_model.config_binary_ops(background, settings.encoding)
    high = cost_model.config_binary_ops(settings.config_of({n: "masked" for n in settings.layers}),
                                        settings.encoding)
    shapley = _shapley(rows, settings)
    states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    return {
        "study": settings.study_name,
        "budget": settings.effective_budget,
        "finished": states["COMPLETE"] + states["PRUNED"],
        "states": {k: v for k, v in states.items() if v},
        "objectives": {"dice": "validation Dice after the trial's short training (maximise)",
                       "cost": f"binary ops of the searched net ({settings.encoding} encoding, base "
                               f"{cost_model.base}, {cost_model.size[0]}x{cost_model.size[1]}) (minimise)"},
        "settings": {k: v for k, v in asdict(settings).items() if k != "storage"},
        "pareto_front": [{k: r[k] for k in TABLE_FIELDS} for r in front],
        "shapley": {k: (v if isinstance(v, str) else v.as_dict()) for k, v in shapley.items()},
        "cost_aware": [
            {"k": k, "config": str(settings.config_of(p)),
             "trials": [{k2: r[k2] for k2 in ("number", "state", "dice", "cost")}
                        for r in rows if r["cost_aware_k"] == k]}
            for k, p in enumerate(cost_aware_params(settings, cost_model))
        ],
        "best_per_cost_bracket": best_per_bracket(rows, low, high, brackets),
        "trials": rows,
    }


def write_summary(summary: dict, out_dir: str | Path) -> dict[str, Path]:
    """summary.json, trials.csv, pareto.csv, pareto.png and shapley.png in ``out_dir``."""
    out = writable_dir(out_dir)
    paths = {"summary": out / "summary.json", "trials": out / "trials.csv", "pareto_table": out / "pareto.csv"}
    write_json(paths["summary"], summary)
    for key, rows in (("trials", summary["trials"]), ("pareto_table", summary["pareto_front"])):
        with atomic_write(paths[key], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TABLE_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    paths["pareto_plot"] = plot_pareto(summary["trials"], summary["pareto_front"], out / "pareto.png")
    shapley = {k: ShapleyResult.from_dict(v) for k, v in summary["shapley"].items() if not isinstance(v, str)}
    if shapley:
        labels = [f"{k} ({v.method}, n={v.n_evaluations})" for k, v in shapley.items()]
        paths["shapley_plot"] = plot_shapley(list(shapley.values()), out / "shapley.png", labels)
    return paths


def format_summary(summary: dict) -> str:
    """The Pareto front, Shapley values and best config per cost bracket as text tables."""
    lines = [f"study {summary['study']}: {summary['finished']}/{summary['budget']} finished trials "
             f"({', '.join(f'{k.lower()} {v}' for k, v in summary['states'].items())})", "",
             "Pareto front (cost in G binary ops):", f"{'trial':>6} {'config':>13} {'dice':>7} {'cost':>9} k"]
    for r in summary["pareto_front"]:
        k = "" if r["cost_aware_k"] is None else r["cost_aware_k"]
        lines.append(f"{r['number']:>6} {r['config']:>13} {r['dice']:7.4f} {r['cost'] / 1e9:9.2f} {k}")
    for key, s in summary["shapley"].items():
        lines += ["", f"Shapley values ({key}):"]
        if isinstance(s, str):
            lines.append(f"  not available: {s}")
            continue
        lines.append(f"  method {s['method']}, {s['n_evaluations']} evaluations")
        for p, v in s["values"].items():
            se = s["se"][p]
            est = "not estimable (never varied)" if v is None else f"{v:+.4f}"
            lines.append(f"  {PAPER_NAMES.get(p, p):>8} {est}" + ("" if se is None else f" +- {se:.4f}"))
    lines += ["", "cost-aware configs (the k cheapest layers masked) among the trials:"]
    for c in summary["cost_aware"]:
        runs = ", ".join(f"trial {t['number']} " + (f"dice {t['dice']:.4f}" if t["dice"] is not None else
                                                     t["state"].lower()) for t in c["trials"])
        lines.append(f"  k={c['k']:<2} {c['config']}  {runs or 'not run'}")
    lines += ["", "best config per cost bracket (G binary ops):"]
    for b in summary["best_per_cost_bracket"]:
        lo, hi = (x / 1e9 for x in b["bracket"])
        best = b["best"]
        desc = ("no finished trial" if best is None
                else f"{best['config']} dice {best['dice']:.4f} (trial {best['number']})")
        lines.append(f"  {lo:8.2f} - {hi:8.2f}: {desc}")
    return "\n".join(lines)
