"""The packed runtime: ``load_packed(path, backend)`` turns a `.mbu` file into a module images -> logits.

Backends implement the stage kinds of ``graph.py``: ``cpu`` (the numpy reference engine) and
``cuda`` (``lightning_mbu.ops.cuda``, binary tensor cores), which exposes
``build(net: PackedNet, encoding=None, **options) -> nn.Module`` like ``cpu.build``.
"""

from __future__ import annotations

import os
from importlib import import_module

from torch import nn

BACKENDS = ("cpu", "cuda")


def load_packed(path: str | os.PathLike, backend: str = "cpu", encoding: str | None = None, **options) -> nn.Module:
    """Load an exported model; ``forward`` takes an image batch (N, C, H, W) and returns logits (N, classes, H, W).

    The batch holds uint8 pixels or floats in [0, 1]; the model normalises and pads it as the file says
    (``preprocess.prepare``, docs/format.md section 6). A format 1 file takes normalised floats, as it did.

    ``encoding`` ("xor" or "and") overrides the file's default dot-product form; ``options`` go to
    the backend (cpu: ``threads``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    from .format import load

    net = load(path)
    try:
        module = import_module(f"{__name__}.{backend}")
    except ImportError as e:
        raise RuntimeError(f"the {backend} backend is not available here: {e}") from e
    return module.build(net, encoding=encoding, **options)
