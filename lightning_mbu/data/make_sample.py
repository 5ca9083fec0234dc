"""Rebuild the built-in sample from the DSB2018 nuclei set (CC0).

    python -m lightning_mbu.data.make_sample ../shared/data/dsb2018 --out lightning_mbu/data/sample

Picks ``n`` images with a seeded shuffle, centre-crops each (and its union mask) to
``crop`` x ``crop`` at native resolution, and writes them in the ``folder`` layout
(grey images stay one-channel to keep the package small).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import read_sample
from .layouts import find_dsb2018

LICENSE_NOTE = """\
# Built-in sample: {n} nuclei images, {crop}x{crop}

Real microscopy images of cell nuclei and their foreground masks, centre-cropped
from the 2018 Data Science Bowl stage 1 training set (the paper's "Nuclei" dataset),
as corrected by a public community fixes repository. The per-nucleus masks of each
image are merged into one binary mask (0 background, 255 nucleus).

License: CC0 1.0 (public domain), like the source data and its fixes
(https://www.kaggle.com/c/data-science-bowl-2018/discussion/47864).
Source: https://www.kaggle.com/c/data-science-bowl-2018
Rebuilt with: python -m lightning_mbu.data.make_sample <dsb2018 root> --n {n} --crop {crop} --seed {seed}
Image ids: the file stems in images/ and masks/.
"""


def centre_crop(a: np.ndarray, crop: int) -> np.ndarray:
    top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
    return a[top:top + crop, left:left + crop]


def make_sample(dsb_root: Path, out: Path, n: int = 24, crop: int = 256, seed: int = 0) -> list[str]:
    samples = find_dsb2018(Path(dsb_root))
    order = np.random.default_rng(seed).permutation(len(samples))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    picked = []
    for i in order:
        image, mask = read_sample(samples[i])
        if min(image.shape[:2]) < crop:
            continue
        image, mask = centre_crop(image, crop), centre_crop(mask, crop)
        if not mask.any():  # a crop without nuclei teaches nothing
            continue
        grey = (image == image[..., :1]).all()
        Image.fromarray(image[..., 0] if grey else image).save(out / "images" / f"{samples[i].id}.png", optimize=True)
        Image.fromarray(mask * 255).save(out / "masks" / f"{samples[i].id}.png", optimize=True)
        picked.append(samples[i].id)
        if len(picked) == n:
            break
    (out / "LICENSE.md").write_text(LICENSE_NOTE.format(n=len(picked), crop=crop, seed=seed))
    return picked


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dsb_root", type=Path, help="the dsb2018 folder (holding stage1_train/)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "sample")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ids = make_sample(a.dsb_root, a.out, a.n, a.crop, a.seed)
    print(f"wrote {len(ids)} image/mask pairs to {a.out}")


if __name__ == "__main__":
    main()
