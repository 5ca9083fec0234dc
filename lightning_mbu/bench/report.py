"""Benchmark results: the JSON file, the Markdown table, and the figures (paper Figs 5-7).

A results file is one JSON object: environment fields (``gpu``, ``driver``, ``cuda``,
``torch``, ``commit``, ``date``), the ``workload``, the ``settings``, a list ``records``
(one per model and variant measured), ``skipped`` (models that could not run, and why)
and, in breakdown mode, ``breakdown`` (per packed model, a list of stages or kernels).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import files
from ..config import LayerConfig

ENV_FIELDS = ("gpu", "driver", "cuda", "torch", "commit", "date")
RECORD_FIELDS = ("model", "height", "width", "batch", "ms_per_image", "images_per_s", "joules_per_image")
BASELINES = ("fp32", "fp16")


# -- model names ------------------------------------------------------------------------------
def model_name(config: str | LayerConfig | None) -> str:
    """``binary`` for the all-binary net, ``mbu:<12 letters>`` for any other packed config."""
    config = LayerConfig.parse(config)
    return "binary" if set(config.modes) == {"binary"} else f"mbu:{config}"


def masked_count(model: str) -> int | None:
    """Number of masked layers of a packed model's name (0 for binary), None for a baseline."""
    if model == "binary":
        return 0
    if model.startswith("mbu:"):
        return str(LayerConfig.parse(model[4:])).count("M")
    return None


# -- environment ------------------------------------------------------------------------------
def git_commit(root: str | os.PathLike | None = None) -> str:
    """``git describe --always --dirty`` of the checkout, or $LIGHTNING_MBU_COMMIT where git is absent."""
    if os.environ.get("LIGHTNING_MBU_COMMIT"):
        return os.environ["LIGHTNING_MBU_COMMIT"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def environment(device_index: int = 0) -> dict:
    import torch

    from .energy import driver_version

    gpu = torch.cuda.get_device_name(device_index) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "commit": git_commit(Path(__file__).resolve().parent),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- JSON -------------------------------------------------------------------------------------
def validate(result: dict) -> None:
    """Raise ValueError naming the first field a results document lacks."""
    for key in (*ENV_FIELDS, "records"):
        if key not in result:
            raise ValueError(f"benchmark results lack the field {key!r}")
    for i, rec in enumerate(result["records"]):
        missing = [k for k in RECORD_FIELDS if k not in rec]
        if missing:
            raise ValueError(f"record {i} ({rec.get('model', '?')}) lacks {', '.join(missing)}")
        if masked_count(rec["model"]) is not None and "bit_exact" not in rec:
            raise ValueError(f"record {i} ({rec['model']}) is a packed model but lacks bit_exact")


def write_json(result: dict, path: str | os.PathLike) -> Path:
    validate(result)
    return files.write_json(path, result)


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    validate(result)
    return result


def merge(results: Sequence[dict]) -> dict:
    """One results document from runs on the same GPU: records and skipped lists joined in order.

    Environment fields come from the first run; ``runs`` keeps each run's commit, date and settings.
    """
    if not results:
        raise ValueError("nothing to merge")
    gpus = {r["gpu"] for r in results}
    if len(gpus) > 1:
        raise ValueError(f"results from different GPUs ({', '.join(map(str, sorted(gpus, key=str)))}) do not merge")
    if len(results) == 1:
        return results[0]
    out = {**results[0], "records": [], "skipped": [], "runs": []}
    for r in results:
        out["records"] += r["records"]
        out["skipped"] += r.get("skipped", [])
        out["runs"].append({k: r.get(k) for k in ("commit", "date", "workload", "settings")})
        for model, rows in r.get("breakdown", {}).items():
            out.setdefault("breakdown", {})[model] = rows
    return out


def best_records(records: Sequence[dict]) -> list[dict]:
    """The fastest record of each model (baselines are measured in several variants), in first-seen order."""
    best: dict[str, dict] = {}
    for rec in records:
        cur = best.get(rec["model"])
        if cur is None or rec["ms_per_image"] < cur["ms_per_image"]:
            best[rec["model"]] = rec
    return list(best.values())


# -- Markdown ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def markdown_table(result: dict) -> str:
    """One row per record; the speed-up column is against the fastest FP16 variant measured."""
    records = result["records"]
    fp16 = [r["ms_per_image"] for r in records if r["model"] == "fp16"]
    ref = min(fp16) if fp16 else None
    head = ["model", "variant", "H x W", "batch", "ms/image", "images/s", "J/image", "peak GB", "bit-exact"]
    if ref:
        head.append("x FP16")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        row = [f"`{r['model']}`", r.get("variant", ""), f"{r['height']} x {r['width']}", r["batch"],
               _fmt(r["ms_per_image"]), _fmt(r["images_per_s"], 4), _fmt(r["joules_per_image"]),
               _fmt(r.get("peak_memory_gb")), _fmt(r.get("bit_exact")) if "bit_exact" in r else ""]
        if ref:
            row.append(f"{ref / r['ms_per_image']:.2f}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    env = ", ".join(f"{k} {result.get(k)}" for k in ENV_FIELDS)
    out = [f"Benchmark ({env})", "", *lines]
    if result.get("skipped"):
        out += ["", "Not measured:", *(f"- `{s['model']}`: {s['reason']}" for s in result["skipped"])]
    for model, rows in result.get("breakdown", {}).items():
        out += ["", f"Per-stage breakdown of `{model}` (one batch):", "",
                "| stage | kind | mode | ms | % | binary TOPS | kernel |", "|---|---|---|---|---|---|---|"]
        total = sum(r["ms"] for r in rows) or 1.0
        out += [f"| {r['stage']} | {r.get('kind', '')} | {r.get('mode') or ''} | {r['ms']:.3f} | "
                f"{100 * r['ms'] / total:.1f} | {_fmt(r.get('tops'), 4)} | {r.get('kernel') or ''} |" for r in rows]
    return "\n".join(out) + "\n"


# -- accuracy (for the Pareto front) ----------------------------------------------------------
_DICE_KEYS = ("test/dice", "test_dice", "dice", "val/dice", "val_dice")  # preference order
_CONFIG_KEYS = ("config", "model", "params")
_FULL_PRECISION = {None, "fp", "fp32", "fp16", "full precision", "full_precision", "none"}


def _entry(d: dict) -> tuple[list[str], float] | None:
    dice = next((d[k] for k in _DICE_KEYS if isinstance(d.get(k), (int, float))), None)
    key = next((k for k in _CONFIG_KEYS if k in d), None)
    if dice is None or key is None:
        return None
    spec = d[key]
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in _FULL_PRECISION):
        return list(BASELINES), float(dice)
    if isinstance(spec, str) and spec.startswith("mbu:"):
        spec = spec[4:]
    if isinstance(spec, str) and spec == "binary":
        return ["binary"], float(dice)
    try:
        return [model_name(spec)], float(dice)
    except (ValueError, TypeError):
        return None


def accuracy_by_model(documents: Iterable) -> dict[str, float]:
    """Dice per benchmark model name, from any JSON (``eval`` output, ``search`` summary).

    Every object holding a config (``config``/``model``/``params``: 12 letters, a layer
    mapping, or full precision) next to a Dice (``test/dice`` preferred over ``dice``
    over ``val/dice``) counts; where a model appears more than once its best Dice is kept.
    """
    found: dict[str, float] = {}

    def walk(node):
        if isinstance(node, dict):
            hit = _entry(node)
            if hit:
                for model in hit[0]:
                    found[model] = max(found.get(model, float("-inf")), hit[1])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for doc in documents:
        walk(doc)
    return found


def load_accuracy(paths: Iterable[str | os.PathLike]) -> dict[str, float]:
    docs = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"no accuracy results at {p}")
        try:
            docs.append(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e})") from None
    acc = accuracy_by_model(docs)
    if not acc:
        raise ValueError(f"no (config, dice) pairs found in {', '.join(map(str, paths))}")
    return acc


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both maximised), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


# -- figures ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on benchmark machines
    import matplotlib.pyplot as plt

    return plt


def _bars(records: Sequence[dict], key: str, ylabel: str, title: str, path: Path) -> Path | None:
    rows = [r for r in best_records(records) if r.get(key) is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.6))
    colors = ["tab:gray" if r["model"] in BASELINES else "tab:blue" for r in rows]
    bars = ax.bar(range(len(rows)), [r[key] for r in rows], color=colors)
    ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150)
    plt.close(fig)
    return path


def plot_latency(result: dict, path: str | os.PathLike) -> Path | None:
    """Fig. 5: ms per image (lower is better)."""
    return _bars(result["records"], "ms_per_image", "ms / image", _title(result, "Latency per image"), Path(path))


def plot_energy(result: dict, path: str | os.PathLike) -> Path | None:
    """Fig. 6: joules per image; None (no file) where no record has an energy reading."""
    return _bars(result["records"], "joules_per_image", "J / image", _title(result, "Energy per image"), Path(path))


def plot_pareto(result: dict, accuracy: dict[str, float], path: str | os.PathLike) -> Path | None:
    """Fig. 7: Dice against images/s; packed models coloured by how many layers are masked."""
    rows = [r for r in best_records(result["records"]) if r["model"] in accuracy]
    if not rows:
        return None
    plt = _pyplot()
    pts = [(r["images_per_s"], accuracy[r["model"]]) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    cmap = plt.get_cmap("viridis_r")  # bright -> dark as more layers get masked, as in the paper
    for r, (x, y) in zip(rows, pts):
        k = masked_count(r["model"])
        ax.scatter(x, y, color="tab:red" if k is None else cmap(k / 12), marker="s" if k is None else "o",
                   zorder=3)
        ax.annotate(r["model"].removeprefix("mbu:"), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, zorder=2, label="Pareto front")
    ax.set_xlabel("images / s")
    ax.set_ylabel("Dice")
    ax.set_title(_title(result, "Speed vs accuracy"), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150)
    plt.close(fig)
    return Path(path)


def _title(result: dict, what: str) -> str:
    w = result.get("workload", {})
    return f"{what}\n{w.get('name', '')} {w.get('height', '?')}x{w.get('width', '?')}, {result.get('gpu')}"


def write_report(result: dict, stem: str | os.PathLike, accuracy: dict[str, float] | None = None) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and the figures that have data; returns the paths written."""
    stem = Path(stem)
    written = [write_json(result, f"{stem}.json")]
    md = Path(f"{stem}.md")
    files.write_text(md, markdown_table(result))
    written.append(md)
    for fig in (plot_latency(result, f"{stem}-latency.png"), plot_energy(result, f"{stem}-energy.png"),
                plot_pareto(result, accuracy, f"{stem}-pareto.png") if accuracy else None):
        if fig is not None:
            written.append(fig)
    return written
