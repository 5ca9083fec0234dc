"""The `.mbu` file: a PackedNet's tensors in safetensors, its graph as JSON in the header metadata.

No pickle. Each tensor's SHA-256 is stored in the JSON, so truncation and tampering are caught
before a backend sees the data; every error names the file and the stage or tensor at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ..ops.graph import FORMAT_NAME, FORMAT_VERSION, PackedNet

#: the safetensors metadata key holding the JSON document
META_KEY = "lightning_mbu"


def _digest(arr: np.ndarray) -> str:
    little_endian = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(little_endian.tobytes()).hexdigest()


def save(net: PackedNet, path: str | os.PathLike) -> Path:
    """Write ``net`` to ``path`` (validated first)."""
    net.validate()
    tensors = {k: np.ascontiguousarray(v) for k, v in net.tensors().items()}
    meta = net.meta()
    meta["sha256"] = {k: _digest(v) for k, v in sorted(tensors.items())}
    path = Path(path)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    return path


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every malformed header/buffer
        raise ValueError(f"{path}: not a readable .mbu file (truncated or corrupt?): {e}") from e
    if META_KEY not in header:
        raise ValueError(f"{path}: a safetensors file without lightning-mbu metadata; not an exported model")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its metadata is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its metadata is not a JSON object")
    return meta, tensors


def load(path: str | os.PathLike) -> PackedNet:
    """Read and fully validate a `.mbu` file; raise ValueError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    meta, tensors = _read(path)
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: written in format version {meta.get('version')!r}; this lightning-mbu "
                         f"reads version {FORMAT_VERSION} (re-export the checkpoint with this version)")
    digests = meta.get("sha256")
    if not isinstance(digests, dict):
        raise ValueError(f"{path}: metadata has no 'sha256' table")
    missing = sorted(set(digests) - set(tensors))
    if missing:
        raise ValueError(f"{path}: tensor(s) {', '.join(missing)} missing")
    for name, arr in sorted(tensors.items()):
        if name not in digests:
            raise ValueError(f"{path}: tensor {name} has no checksum; the file was modified")
        if _digest(arr) != digests[name]:
            raise ValueError(f"{path}: tensor {name} fails its SHA-256 check: the file is corrupt or was modified")
    try:
        net = PackedNet.from_meta(meta, tensors)
        net.validate()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: {e}") from e
    return net
