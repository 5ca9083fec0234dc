"""The layering rule of ARCHITECTURE.md: inference (lightning_mbu.ops, cutlass_kernels) is the bottom layer.

It imports nothing from training, export, search or bench, and never needs Lightning, optuna or
matplotlib; export depends on ops one way only. Checked twice: by what a fresh interpreter loads, and
by every import statement in the source (function-level ones too, which a run may not reach).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lightning", "pytorch_lightning", "optuna", "matplotlib", "albumentations", "torchmetrics")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (``from x import y`` gives x and x.y), relative ones resolved."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # an __init__ is its folder's package too: its relative imports resolve the same
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def offending(folder: str, allowed, forbidden, root: Path = ROOT) -> dict[str, list[str]]:
    """Per source file under ``folder``: the imports of forbidden modules that no allowed prefix covers."""
    out = {}
    for path in sorted((root / folder).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path, root)
                     if any(m == f or m.startswith(f + ".") for f in forbidden)
                     and not any(m == a or m.startswith(a + ".") for a in allowed))
        if bad:
            out[path.relative_to(root).as_posix()] = bad
    return out


def test_importing_the_inference_layer_loads_no_training_stack():
    code = ("import sys, lightning_mbu.ops, lightning_mbu.ops.cpu, lightning_mbu.ops.format, cutlass_kernels.table, "
            "cutlass_kernels.build\n"
            "try:\n    import lightning_mbu.ops.cuda\nexcept ImportError:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_package_loads_its_public_names_lazily():
    import lightning_mbu

    code = "import sys, lightning_mbu; print(sorted(m for m in sys.modules if m.startswith('lightning_mbu.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for name in lightning_mbu.__all__:
        assert getattr(lightning_mbu, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lightning_mbu.nope  # noqa: B018


def test_ops_import_only_ops_and_the_config_from_the_package():
    forbidden = ("lightning_mbu", *HEAVY)
    assert offending("lightning_mbu/ops", ("lightning_mbu.ops", "lightning_mbu.config"), forbidden) == {}


def test_cutlass_kernels_is_a_leaf():
    assert offending("cutlass_kernels", (), ("lightning_mbu", *HEAVY)) == {}


def test_export_depends_on_ops_and_the_model_never_on_what_uses_it():
    users = ("search", "bench", "commands", "cli", "predict", "callbacks", "module", "data")
    assert offending("lightning_mbu/export", (), tuple(f"lightning_mbu.{u}" for u in users) + HEAVY) == {}


def test_the_scan_sees_relative_and_function_level_imports(tmp_path):
    probe = tmp_path / "lightning_mbu" / "ops" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import optuna\n\ndef f():\n    from ..export import fold\n    from . import graph\n")
    assert offending("lightning_mbu/ops", ("lightning_mbu.ops",), ("lightning_mbu", "optuna"), tmp_path) == {
        "lightning_mbu/ops/probe.py": ["lightning_mbu.export", "lightning_mbu.export.fold", "optuna"]}
