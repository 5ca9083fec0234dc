"""Reading and checking image/mask pairs, and the torch Dataset over them.

Every bad input raises ``BadSampleError`` (a ValueError) naming the file: an unreadable
or corrupt image, a missing mask, an image/mask size mismatch, a mask with values
other than {0, 1} or {0, 255}. ``check_sample`` finds the cheap ones (headers, PNG
checksums, sizes) without decoding pixels; a full check also decodes everything.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .layouts import Sample

#: what PIL raises on unreadable, truncated or corrupt files
_READ_ERRORS = (OSError, SyntaxError, UnidentifiedImageError, ValueError, EOFError)


class BadSampleError(ValueError):
    """A sample that cannot be used as it is; the message names the file."""


def _open(path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise BadSampleError(f"missing {what} {path}") from None
    except _READ_ERRORS as e:
        raise BadSampleError(f"cannot read {what} {path}: {e}") from None


def _decode(path, what: str) -> Image.Image:
    im = _open(path, what)
    try:
        im.load()
    except _READ_ERRORS as e:
        raise BadSampleError(f"corrupt {what} {path}: {e}") from None
    return im


def read_image(path) -> np.ndarray:
    """H x W x 3 uint8 (grey, palette and RGBA images are converted to RGB; alpha is dropped)."""
    return np.asarray(_decode(path, "image").convert("RGB"))


def read_mask_file(path) -> np.ndarray:
    """H x W bool from one mask file whose values are {0, 1} or {0, 255}."""
    im = _decode(path, "mask")
    a = np.asarray(im.convert("L") if im.mode == "1" else im)
    if a.ndim == 3:  # an RGB(A) mask is accepted only when it is grey
        if not (a[..., :3] == a[..., :1]).all():
            raise BadSampleError(f"mask {path} is a colour image; expected a grey or binary mask")
        a = a[..., 0]
    values = np.unique(a)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise BadSampleError(f"mask {path} has values {{{shown}}}; expected {{0, 1}} or {{0, 255}}")
    return a > 0


def _size_mismatch(sample: Sample, mask_path, image_size, mask_size) -> BadSampleError:
    return BadSampleError(
        f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but image {sample.image} is "
        f"{image_size[0]}x{image_size[1]} (width x height)"
    )


def _missing_mask(sample: Sample) -> BadSampleError:
    return BadSampleError(f"image {sample.image} has no mask: nothing at {sample.expected_mask}")


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3 uint8, mask H x W uint8 in {0, 1}: the union of the sample's masks)."""
    if not sample.masks:
        raise _missing_mask(sample)
    image = read_image(sample.image)
    mask = np.zeros(image.shape[:2], dtype=bool)
    for path in sample.masks:
        m = read_mask_file(path)
        if m.shape != mask.shape:
            raise _size_mismatch(sample, path, image.shape[1::-1], m.shape[::-1])
        mask |= m
    return image, mask.astype(np.uint8)


def check_sample(sample: Sample, full: bool = False) -> tuple[int, int]:
    """Raise ``BadSampleError`` if the sample is unusable; return the image's (width, height).

    Without ``full`` only headers and PNG checksums are read (a few ms per file);
    ``full`` decodes every pixel, which also checks mask values.
    """
    if full:
        return read_sample(sample)[0].shape[1::-1]
    if not sample.masks:
        raise _missing_mask(sample)
    with _open(sample.image, "image") as im:
        size = im.size
        try:
            im.verify()  # PNG: chunk checksums, catches truncated and corrupted files
        except _READ_ERRORS as e:
            raise BadSampleError(f"corrupt image {sample.image}: {e}") from None
    for path in sample.masks:
        with _open(path, "mask") as m:
            if m.size != size:
                raise _size_mismatch(sample, path, size, m.size)
    return size


class SegmentationDataset(Dataset):
    """(image float32 3 x H x W, mask float32 1 x H x W in {0, 1}) after an albumentations ``transform``."""

    def __init__(self, samples: list[Sample], transform):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_sample(self.samples[i])
        out = self.transform(image=image, mask=mask)
        x = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float()
        y = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return x, y
