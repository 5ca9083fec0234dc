"""Write a compact, resized copy of a dataset in the ``folder`` layout, to carry it where the original cannot go.

    python -m lightning_mbu.data.cache ../shared/data/dsb2018 .cache/dsb2018-512 --size 512

Every sample is read with the package's own readers (so the copy holds exactly what
``SegmentationDataModule`` would train on: the union mask, RGB images), resized once to
``size`` (area averaging when shrinking, bilinear when enlarging, nearest neighbour for
masks, like the data module's resize), and written as ``images/<id>.<ext>`` and
``masks/<id>.png`` (0/255). Grey images are stored with one channel, 16-bit images as
16-bit PNGs (JPEG holds only 8 bits, so ``--format jpeg`` refuses them). Sample ids and
their sorted order are kept, so a seeded split of the copy picks the same images as a
split of the original. ``cache.json`` records the source, settings and bytes written.
An existing cache is replaced only with ``--force``; every file is written atomically.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import OutputError, atomic_path, writable_dir, write_json
from .dataset import BadSampleError, read_sample
from .layouts import get_layout

FORMATS = {"jpeg": ".jpg", "png": ".png"}
MANIFEST = "cache.json"


def _resample(shrink: bool, mask: bool) -> Image.Resampling:
    if mask:
        return Image.Resampling.NEAREST
    # area averaging when shrinking: no aliasing of small nuclei
    return Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR


def _resize(a: np.ndarray, size: tuple[int, int], mask: bool) -> np.ndarray:
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    resample = _resample(h * w < a.shape[0] * a.shape[1], mask)
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((w, h), resample))
    # 16-bit images arrive as float32 in [0, 1]: resized channel by channel in PIL's float mode
    return np.stack([np.asarray(Image.fromarray(c, "F").resize((w, h), resample)) for c in a.transpose(2, 0, 1)], -1)


def _save_image(image: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    grey = bool((image == image[..., :1]).all())
    if image.dtype != np.uint8:  # 16 bits: stored as a 16-bit PNG, read back as value / 65535
        if fmt == "jpeg":
            raise ValueError(f"{path.stem} is a 16-bit image and JPEG holds 8 bits; use --format png")
        wide = np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)
        with atomic_path(path) as tmp:
            if grey:
                Image.fromarray(wide[..., 0]).save(tmp)
            else:  # Pillow cannot write 16-bit colour; OpenCV (installed with albumentations) can
                import cv2

                if not cv2.imwrite(str(tmp), wide[..., ::-1]):
                    raise OSError(f"cannot write {path}")
        return
    im = Image.fromarray(image[..., 0] if grey else image)
    with atomic_path(path) as tmp:
        if fmt == "jpeg":
            im.save(tmp, quality=quality, subsampling=0, optimize=True)  # 4:4:4: no chroma blur
        else:
            im.save(tmp, optimize=True)


def _prepare_output(out: Path, force: bool) -> None:
    """Refuse a folder holding anything but an earlier (maybe unfinished) cache, and that unless ``force``."""
    if not out.exists() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ("images", "masks", MANIFEST))
    if foreign:
        raise OutputError(f"cache output {out} holds other files ({', '.join(foreign[:3])}); pick an empty or new folder")
    if not force:
        raise OutputError(f"cache output {out} holds a cache already; pass --force to replace it")
    for sub in ("images", "masks"):  # stale samples would join the next training set
        for f in (out / sub).glob("*") if (out / sub).is_dir() else ():
            if f.is_file():
                f.unlink()


def write_cache(
    source: str | Path,
    out: str | Path,
    size: int | Sequence[int] = 512,
    layout: str | None = None,
    fmt: str = "jpeg",
    quality: int = 95,
    skip_bad: bool = False,
    force: bool = False,
) -> dict:
    """Write the resized copy of ``source`` to ``out`` and return its manifest (also saved as ``cache.json``).

    ``out`` must be new, empty, or (with ``force``) an earlier cache, which is replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (height, width), got {size}")
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ValueError(f"cache output {out} is the source folder; pick another")
    lay = get_layout(layout, source)
    samples = lay.find(source)
    _prepare_output(out, force)
    writable_dir(out / "images")
    writable_dir(out / "masks")
    written, skipped = [], []
    for s in samples:
        try:
            image, mask = read_sample(s)
        except BadSampleError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        _save_image(_resize(image, (h, w), mask=False), out / "images" / f"{s.id}{FORMATS[fmt]}", fmt, quality)
        with atomic_path(out / "masks" / f"{s.id}.png") as tmp:
            Image.fromarray(_resize(mask * 255, (h, w), mask=True)).save(tmp, optimize=True)
        written.append(s.id)
    if not written:
        raise ValueError(f"no usable samples in {source}")
    files = [p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST]
    manifest = {
        "source": str(source), "layout": lay.name, "size": [h, w], "format": fmt,
        "quality": quality if fmt == "jpeg" else None, "samples": len(written), "skipped": skipped,
        "bytes": sum(p.stat().st_size for p in files),
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="dataset root (any layout the data module reads)")
    p.add_argument("out", type=Path, help="output folder (folder layout: images/, masks/)")
    p.add_argument("--size", type=int, nargs="+", default=[512], help="HEIGHT [WIDTH] (default 512)")
    p.add_argument("--layout", default=None, help="source layout (default: detected)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="jpeg", help="image format (masks are PNG)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable samples instead of stopping")
    p.add_argument("--force", action="store_true", help="replace an earlier cache in OUT")
    a = p.parse_args(argv)
    size = a.size[0] if len(a.size) == 1 else tuple(a.size[:2])
    try:
        m = write_cache(a.source, a.out, size, a.layout, a.fmt, a.quality, a.skip_bad, a.force)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"wrote {m['samples']} samples ({m['bytes'] / 2**20:.1f} MiB, {m['format']}, {m['size'][0]}x{m['size'][1]}) "
          f"to {a.out}" + (f"; skipped {len(m['skipped'])}" if m["skipped"] else ""))


if __name__ == "__main__":
    main()
