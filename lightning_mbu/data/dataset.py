"""Reading and checking image/mask pairs, and the torch Dataset over them.

Every bad input raises ``BadSampleError`` (a ValueError) naming the file: an unreadable
or corrupt image, a missing mask, an image/mask size mismatch, a mask with values
other than {0, 1} or {0, 255}, pixels of a kind we cannot read faithfully.
``check_sample`` decodes every mask (small) but only the image's header and PNG
checksums; a full check also decodes the image.

Images are read at their real bit depth: 8-bit files as uint8, 16-bit files (common in
microscopy) as float32 in [0, 1] (value / 65535: albumentations' convention for float
images), so nothing is clipped or cut to 8 bits.
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


def _load(im: Image.Image, path, what: str) -> Image.Image:
    try:
        im.load()
    except _READ_ERRORS as e:
        raise BadSampleError(f"corrupt {what} {path}: {e}") from None
    return im


def _decode(path, what: str) -> Image.Image:
    return _load(_open(path, what), path, what)


def _pixel_kind(im: Image.Image, path) -> str:
    """'8bit', '16bit' (grey, PIL mode I;16 or I) or '16bit-colour' (PIL would read only its top 8 bits);
    ``BadSampleError`` for floating-point pixels. Reads the header only (call before ``load``)."""
    if im.mode == "F":
        raise BadSampleError(f"image {path} has floating-point pixels; save it as an 8- or 16-bit PNG or TIFF")
    if im.mode == "I" or im.mode.startswith("I;16"):
        return "16bit"
    args = im.tile[0][3] if im.tile else None  # the decoder's raw mode, e.g. "RGB;16B" for a 16-bit colour PNG
    rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
    return "16bit-colour" if ";16" in rawmode else "8bit"


def _opencv(path):
    try:  # Pillow has no 16-bit colour mode; OpenCV (installed with albumentations) reads them exactly
        import cv2
    except ImportError:
        raise BadSampleError(f"image {path} has 16-bit colour channels, which Pillow reads only at 8 bits; "
                             "reading it needs OpenCV (pip install opencv-python-headless)") from None
    return cv2


def _read_16bit_colour(path) -> np.ndarray:
    cv2 = _opencv(path)
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16:
        raise BadSampleError(f"cannot read 16-bit colour image {path}")
    if a.ndim == 2:
        return a
    if a.shape[2] == 2:  # grey + alpha
        return a[..., 0]
    return a[..., 2::-1]  # BGR(A) -> RGB, alpha dropped


def read_image(path) -> np.ndarray:
    """H x W x 3: uint8 for 8-bit files, float32 in [0, 1] (value / 65535) for 16-bit files.

    Grey, palette and RGBA images become RGB (alpha is dropped).
    """
    im = _open(path, "image")
    kind = _pixel_kind(im, path)
    if kind == "8bit":
        return np.asarray(_load(im, path, "image").convert("RGB"))
    if kind == "16bit":
        a = np.asarray(_load(im, path, "image"))
        if a.min() < 0 or a.max() > 65535:  # a 32-bit integer TIFF
            raise BadSampleError(f"image {path} has pixel values {a.min()}..{a.max()}, outside 16 bits (0..65535)")
    else:
        im.close()
        a = _read_16bit_colour(path)
    a = a.astype(np.float32) / 65535
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else np.ascontiguousarray(a)


def read_mask_file(path) -> np.ndarray:
    """H x W bool from one mask file whose values are {0, 1} or {0, 255} ({0, 65535} for 16-bit masks)."""
    im = _decode(path, "mask")
    a = np.asarray(im.convert("L") if im.mode == "1" else im)
    if a.ndim == 3:  # an RGB(A) mask is accepted only when it is grey
        if not (a[..., :3] == a[..., :1]).all():
            raise BadSampleError(f"mask {path} is a colour image; expected a grey or binary mask")
        a = a[..., 0]
    # bincount: one pass, much faster than np.unique's sort when every mask is checked before training
    values = np.flatnonzero(np.bincount(a.ravel(), minlength=256)) if a.dtype == np.uint8 else np.unique(a)
    found = set(values.tolist())
    if not (found <= {0, 1} or found <= {0, 255} or (a.dtype.itemsize == 2 and found <= {0, 65535})):
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
    """(image H x W x 3 as ``read_image`` gives it, mask H x W uint8 in {0, 1}: the union of the sample's masks)."""
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

    Every mask is decoded (values and size); of the image only the header and PNG checksums
    are read, unless ``full`` decodes it too.
    """
    if full:
        return read_sample(sample)[0].shape[1::-1]
    if not sample.masks:
        raise _missing_mask(sample)
    with _open(sample.image, "image") as im:
        size = im.size
        kind = _pixel_kind(im, sample.image)
        if kind == "16bit-colour":
            _opencv(sample.image)  # fail now, not at the first epoch, when OpenCV is missing
        elif im.mode == "I":  # 32-bit integers: only the pixels tell whether they fit 16 bits
            read_image(sample.image)
        try:
            im.verify()  # PNG: chunk checksums, catches truncated and corrupted files
        except _READ_ERRORS as e:
            raise BadSampleError(f"corrupt image {sample.image}: {e}") from None
    for path in sample.masks:
        m = read_mask_file(path)
        if m.shape[::-1] != size:
            raise _size_mismatch(sample, path, size, m.shape[::-1])
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
