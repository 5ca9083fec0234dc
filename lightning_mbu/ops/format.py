"""The `.mbu` file: a PackedNet's tensors in safetensors, its graph as JSON in the header metadata.

No pickle. Each tensor's SHA-256 and each metadata field's are stored in the JSON, so truncation
and tampering (of a tensor, the model facts, the input preprocessing, a stage) are caught before a
backend sees the data; every error names the file and the tensor or field at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from .graph import FORMAT_NAME, FORMAT_VERSION, PackedNet
from .preprocess import legacy_input_spec

#: the safetensors metadata key holding the JSON document
META_KEY = "lightning_mbu"
#: the JSON field holding the SHA-256 of every other field
META_DIGESTS = "metadata_sha256"


def _digest(arr: np.ndarray) -> str:
    little_endian = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(little_endian.tobytes()).hexdigest()


def _json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def metadata_digests(meta: dict) -> dict[str, str]:
    """SHA-256 of each field of the JSON document (each stage its own, ``stages.<i>``), ``metadata_sha256`` aside."""
    out = {}
    for key, value in meta.items():
        if key == META_DIGESTS:
            continue
        if key == "stages" and isinstance(value, list):
            out.update({f"stages.{i}": _json_digest(stage) for i, stage in enumerate(value)})
        else:
            out[key] = _json_digest(value)
    return out


def _field_name(meta: dict, key: str) -> str:
    """``stages.3 (down1.conv1)`` for a stage, the key itself otherwise."""
    if key.startswith("stages."):
        stages = meta.get("stages")
        i = int(key.split(".")[1])
        if isinstance(stages, list) and i < len(stages) and isinstance(stages[i], dict):
            return f"{key} ({stages[i].get('name', '?')})"
    return key


def _check_metadata(path: Path, meta: dict) -> None:
    stored = meta.get(META_DIGESTS)
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: metadata has no {META_DIGESTS!r} table; the file was modified")
    actual = metadata_digests(meta)
    for key in sorted(set(stored) | set(actual), key=lambda k: (k.startswith("stages."), k)):
        if key not in stored:
            raise ValueError(f"{path}: metadata field {_field_name(meta, key)} was added after export "
                             "(no checksum covers it)")
        if key not in actual:
            raise ValueError(f"{path}: metadata field {key} is missing")
        if stored[key] != actual[key]:
            raise ValueError(f"{path}: metadata field {_field_name(meta, key)} fails its SHA-256 check: the JSON "
                             "was edited after export (re-export the checkpoint)")


def save(net: PackedNet, path: str | os.PathLike) -> Path:
    """Write ``net`` to ``path`` (validated first)."""
    net.validate()
    tensors = {k: np.ascontiguousarray(v) for k, v in net.tensors().items()}
    meta = net.meta()
    meta["sha256"] = {k: _digest(v) for k, v in sorted(tensors.items())}
    meta[META_DIGESTS] = metadata_digests(meta)
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
    version = meta.get("version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: written in format version {version!r}; this lightning-mbu "
                         f"reads versions 1 and {FORMAT_VERSION} (re-export the checkpoint with this version)")
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
    if version == 1:
        meta = _upgrade_format_1(path, meta)
    try:
        net = PackedNet.from_meta(meta, tensors)
        net.validate()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: {e}") from e
    if version == FORMAT_VERSION:  # after the checks above, which say more precisely what an edit broke
        _check_metadata(path, meta)
    return net


def _upgrade_format_1(path: Path, meta: dict) -> dict:
    """A format-1 document read with the old behaviour: no preprocessing (the caller normalises), unchecked JSON."""
    warnings.warn(f"{path}: a format 1 .mbu file: it stores no input preprocessing, so the model takes float "
                  "images normalised by the caller exactly as in training (uint8 pixels are refused), and its "
                  "metadata has no checksum; re-export the checkpoint with this lightning-mbu to fix both",
                  UserWarning, stacklevel=3)
    stages = meta.get("stages")
    first = stages[0] if isinstance(stages, list) and stages and isinstance(stages[0], dict) else {}
    old = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    return {**meta, "input": legacy_input_spec(old, first.get("cin", 3))}
