"""SegmentationDataModule: a folder dataset split by a seed into train/val/test loaders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ..config import parse_size
from .dataset import BadSampleError, SegmentationDataset, check_sample
from .layouts import Layout, Sample, get_layout

if TYPE_CHECKING:  # annotations only: albumentations is imported where transforms are built
    import albumentations as A

#: the built-in sample: real nuclei images in the ``folder`` layout (see sample/LICENSE.md)
SAMPLE_ROOT = Path(__file__).parent / "sample"


NORMALIZATIONS = ("image", "image_per_channel", "min_max", "min_max_per_channel", "fixed")


def build_transform(size: tuple[int, int] | None, augment: bool | A.BasicTransform,
                    normalization: str = "image") -> A.Compose:
    """Resize (masks by nearest neighbour), optional augmentation, then normalise the pixels.

    ``normalization`` is albumentations' per-image rule ("image": zero mean, unit variance
    per image), or "fixed": x / 127.5 - 1 for every image.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    # imported here so the readers and the split import without albumentations/OpenCV (e.g. on a GPU box)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # skip its check for a newer version online
    import albumentations as A
    import cv2

    steps = [] if size is None else [A.Resize(*size, interpolation=cv2.INTER_AREA)]
    if augment is True:
        # shape-preserving only, so non-square datasets (Carvana, ISIC) still batch
        steps += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.RandomBrightnessContrast(p=0.3),
        ]
    elif augment:
        steps.append(augment)
    if normalization == "fixed":  # to [0, 1] by the dtype's range first, so 16-bit (float) images map alike
        steps += [A.ToFloat(), A.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_pixel_value=1.0)]
    else:
        steps.append(A.Normalize(normalization=normalization))
    return A.Compose(steps)


def check_samples(samples: Sequence[Sample], full: bool = False) -> list[tuple[Sample, tuple | None, str | None]]:
    """(sample, (width, height) or None, error message or None) for each sample, in order.

    Decoding releases the GIL, so threads check a few thousand mask files in seconds.
    """
    def check(s: Sample):
        try:
            return s, check_sample(s, full=full), None
        except BadSampleError as e:
            return s, None, str(e)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check, samples))


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic (train, val, test) index arrays; a non-zero fraction gets at least one sample."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    n_test = max(round(n * test_fraction), int(test_fraction > 0))
    n_val = max(round(n * val_fraction), int(val_fraction > 0))
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} samples are too few for val_fraction={val_fraction}, test_fraction={test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


class SegmentationDataModule(pl.LightningDataModule):
    """Binary segmentation data from a folder dataset.

    Args:
        data_root: dataset folder; None uses the built-in sample (24 real nuclei images, 256x256).
        layout: "dsb2018", "carvana", "isic" or "folder" (see ``layouts.py``); None detects it.
        size: (height, width) or one int for a square; None uses the layout's size from the
            paper (Table A.3: Carvana 640x959, ISIC 480x640, Nuclei 512x512), native size for "folder".
        batch_size, num_workers: DataLoader settings.
        val_fraction, test_fraction, seed: the split, deterministic for a seed.
        augment: albumentations augmentation for training: True (flips, small affine,
            brightness/contrast), False, or your own transform.
        normalization: "image" (default: each image to zero mean and unit variance, which
            evens out microscopy images whose brightness differs tenfold), "image_per_channel",
            "min_max", "min_max_per_channel", or "fixed" (pixels / 127.5 - 1).
        skip_bad: skip unusable samples with a warning each and a count, instead of raising.

    ``setup`` checks every sample before any training: each mask is decoded (values, size), each
    image's header and PNG checksums are read (with ``skip_bad`` its pixels are decoded too), so a
    bad file in the val or test split stops the run at the start, not after the last epoch.
    """

    def __init__(
        self,
        data_root: str | Path | None = None,
        layout: str | None = None,
        size: int | Sequence[int] | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        augment: bool | A.BasicTransform = True,
        normalization: str = "image",
        skip_bad: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=[] if isinstance(augment, bool) else ["augment"])
        self.root = SAMPLE_ROOT if data_root is None else Path(data_root).expanduser()
        self.layout: Layout = get_layout("folder" if data_root is None and layout is None else layout, self.root)
        self.size = self.layout.size if size is None else parse_size(size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.augment, self.normalization, self.skip_bad = augment, normalization, skip_bad
        build_transform(self.size, False, normalization)  # fail now on a bad normalization
        self.samples: list[Sample] | None = None
        self.splits: dict[str, list[Sample]] = {}
        #: (height, width) of every image when ``size`` is None (native size), known after ``setup``
        self.native_size: tuple[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.samples is not None:
            return
        good, sizes, bad = [], set(), []
        for s, size, error in check_samples(self.layout.find(self.root), full=self.skip_bad):
            if error is None:
                sizes.add(size)
                good.append(s)
            else:
                bad.append(error)
        if bad and not self.skip_bad:
            shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise BadSampleError(
                f"{len(bad)} bad sample(s) in {self.root}:\n  {shown}\n(pass skip_bad=True / --skip-bad to skip them)"
            )
        for msg in bad:
            rank_zero_warn(f"skipping: {msg}")
        if bad:
            rank_zero_warn(f"skipped {len(bad)} of {len(bad) + len(good)} samples in {self.root}")
        if not good:
            raise ValueError(f"no usable samples in {self.root}")
        if self.size is None and len(sizes) > 1:
            raise ValueError(
                f"images in {self.root} have different sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:4])}"
                f"{', ...' if len(sizes) > 4 else ''}); pass size=(height, width) (--size) to resize them"
            )
        self.samples = good
        if self.size is None:
            w, h = next(iter(sizes))
            self.native_size = (h, w)
        idx = split_indices(len(good), self.val_fraction, self.test_fraction, self.seed)
        self.splits = {name: [good[i] for i in sorted(ix)] for name, ix in zip(("train", "val", "test"), idx)}

    def dataset(self, split: str) -> SegmentationDataset:
        """The ``split`` ("train", "val", "test" or "all") as a Dataset; only "train" is augmented."""
        self.setup()
        samples = self.samples if split == "all" else self.splits.get(split)
        if samples is None:
            raise ValueError(f"unknown split {split!r}; valid: train, val, test, all")
        return SegmentationDataset(samples, build_transform(self.size, self.augment if split == "train" else False,
                                                                self.normalization))

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        """A DataLoader over ``split`` ("train", "val", "test" or "all")."""
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("all")
