"""Output files that never lose data: no input is overwritten, no existing output without ``force``,
and every write is atomic (a temporary file in the same folder, renamed over the target when complete).

    check_output(args.output, inputs=[args.checkpoint], force=args.force)
    with atomic_write(args.output, "w") as f:     # a file object
        json.dump(payload, f)
    with atomic_path("plot.png") as tmp:          # a path, for writers that take one (savefig, torch.save,
        fig.savefig(tmp)                          # PIL); it keeps the suffix, so formats are still inferred

An interrupted or failed write leaves the old file (if any) untouched and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike


class OutputError(ValueError):
    """An output that must not or cannot be written; the message names the file or folder."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks too
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = (), force: bool = False,
                 flag: str = "--force") -> Path:
    """Raise ``OutputError`` unless ``path`` may be written: it is none of ``inputs``, is not a folder,
    and does not exist yet (or ``force``). ``flag`` names the option that allows overwriting."""
    path = Path(path)
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise OutputError(f"output {path} is the input {inp}; writing it would destroy the input, pick another name")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name")
    if path.exists() and not force:
        raise OutputError(f"output {path} exists; pass {flag} to overwrite it")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def writable_dir(folder: PathLike) -> Path:
    """Create ``folder`` (and parents) if needed; ``OutputError`` naming it if that fails or it is read-only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")
    return folder


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path`` in one rename."""
    path = Path(path)
    folder = writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"nothing was written for {path}")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a normal file follows the umask
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave a half-written file
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or "wb"); renamed onto ``path``
    only when the block completes, after the data reached the disk."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', got {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json(path: PathLike, payload) -> Path:
    """``payload`` as indented JSON; nothing is written if it does not serialise."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")
