"""Benchmarks of the packed MBU-Nets against FP32/FP16 PyTorch U-Nets: timing, energy, reports.

``lightning-mbu bench`` (``cli.py``) drives ``suite.Bench``; the parts stand alone:
``timing`` (CUDA events, graphs, rotating inputs), ``energy`` (NVML), ``baselines``
(the fastest plain-PyTorch form of the same U-Net), ``packed`` (packed models and their
bit-exactness), ``breakdown`` (per-stage shapes and times), ``presets`` (Table A.2),
``report`` (JSON, Markdown, figures). Nothing here needs a GPU to import.
"""

from .presets import PRESETS, Workload, resolve
from .report import markdown_table, read_json, write_report

__all__ = ["PRESETS", "Workload", "markdown_table", "read_json", "resolve", "write_report"]
