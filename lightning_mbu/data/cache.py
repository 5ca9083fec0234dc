"""Write a compact, resized copy of a dataset in the ``folder`` layout, to carry it where the original cannot go.

    python -m lightning_mbu.data.cache ../shared/data/dsb2018 .cache/dsb2018-512 --size 512

Every sample is read with the package's own readers (so the copy holds exactly what
``SegmentationDataModule`` would train on: the union mask, RGB images), resized once to
``size`` (area averaging when shrinking, bilinear when enlarging, nearest neighbour for
masks, like the data module's resize), and written as ``images/<id>.<ext>`` and
``masks/<id>.png`` (0/255). Grey images are stored with one channel. Sample ids and
their sorted order are kept, so a seeded split of the copy picks the same images as a
split of the original. ``cache.json`` records the source, settings and bytes written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import BadSampleError, read_sample
from .layouts import get_layout

FORMATS = {"jpeg": ".jpg", "png": ".png"}
MANIFEST = "cache.json"


def _resize(a: np.ndarray, size: tuple[int, int], mask: bool) -> Image.Image:
    im = Image.fromarray(a)
    h, w = size
    if (im.height, im.width) == (h, w):
        return im
    if mask:
        resample = Image.Resampling.NEAREST
    elif h * w < im.height * im.width:
        resample = Image.Resampling.BOX  # area averaging: no aliasing of small nuclei
    else:
        resample = Image.Resampling.BILINEAR
    return im.resize((w, h), resample)


def _save_image(image: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    grey = bool((image == image[..., :1]).all())
    im = Image.fromarray(image[..., 0] if grey else image)
    if fmt == "jpeg":
        im.save(path, quality=quality, subsampling=0, optimize=True)  # 4:4:4: no chroma blur
    else:
        im.save(path, optimize=True)


def write_cache(
    source: str | Path,
    out: str | Path,
    size: int | Sequence[int] = 512,
    layout: str | None = None,
    fmt: str = "jpeg",
    quality: int = 95,
    skip_bad: bool = False,
) -> dict:
    """Write the resized copy of ``source`` to ``out`` and return its manifest (also saved as ``cache.json``)."""
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
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for s in samples:
        try:
            image, mask = read_sample(s)
        except BadSampleError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        _save_image(np.asarray(_resize(image, (h, w), mask=False)), out / "images" / f"{s.id}{FORMATS[fmt]}",
                    fmt, quality)
        _resize(mask * 255, (h, w), mask=True).save(out / "masks" / f"{s.id}.png", optimize=True)
        written.append(s.id)
    if not written:
        raise ValueError(f"no usable samples in {source}")
    files = [p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST]
    manifest = {
        "source": str(source), "layout": lay.name, "size": [h, w], "format": fmt,
        "quality": quality if fmt == "jpeg" else None, "samples": len(written), "skipped": skipped,
        "bytes": sum(p.stat().st_size for p in files),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
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
    a = p.parse_args(argv)
    size = a.size[0] if len(a.size) == 1 else tuple(a.size[:2])
    m = write_cache(a.source, a.out, size, a.layout, a.fmt, a.quality, a.skip_bad)
    print(f"wrote {m['samples']} samples ({m['bytes'] / 2**20:.1f} MiB, {m['format']}, {m['size'][0]}x{m['size'][1]}) "
          f"to {a.out}" + (f"; skipped {len(m['skipped'])}" if m["skipped"] else ""))


if __name__ == "__main__":
    main()
