"""What a packed model does to an image batch before its first layer, the same in every backend.

The ``input`` section of a `.mbu` file (docs/format.md, "Input") says it: the channel count, the
normalisation training used (albumentations' ``A.Normalize`` rules, on 8-bit pixel values) and the
size policy (pad bottom/right to a multiple of 16, crop the logits back). ``prepare`` refuses what
the net cannot segment (a wrong shape, an empty batch, NaN/Inf, an unsupported dtype), so a bad
input is an error and never a silently wrong mask.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: training's per-image rules (``SegmentationDataModule(normalization=...)``), and "none" for files
#: that store no preprocessing (format 1): the caller normalises
NORMALIZATIONS = ("image", "image_per_channel", "min_max", "min_max_per_channel", "fixed", "none")
#: albumentations' constants: ``(x - mean) / (std + EPS)`` and the result clipped to +-CLIP
EPS, CLIP = 1e-4, 20.0
#: input height and width are padded up to a multiple of this (four 2x2 max-pools); the U-Net pads the same way
PAD_MULTIPLE = 16
#: 16-bit images become float32 value / 65535, as ``data.dataset.read_image`` reads 16-bit files
UINT16_MAX = 65535.0


def input_spec(channels: int, normalization: str, pad_multiple: int, train_size=None) -> dict:
    """The ``input`` metadata of a `.mbu` file."""
    return {"layout": "NCHW", "channels": int(channels), "pixels": "uint8 0-255 or float 0-1",
            "normalization": normalization,
            "eps": EPS, "clip": CLIP, "pad_multiple": int(pad_multiple), "pad_value": 0.0,
            "pad_sides": "bottom_right", "crop_logits": True,
            "train_size": None if train_size is None else [int(s) for s in train_size]}


def legacy_input_spec(old: dict, channels: int) -> dict:
    """A format-1 ``input`` section (size policy only) read as "the caller normalises"."""
    return {**input_spec(channels, "none", old.get("pad_multiple", PAD_MULTIPLE)), **old, "normalization": "none"}


def validate_input_spec(spec: dict, channels: int, pools: int) -> None:
    """Raise ValueError naming the first ``input`` field that is missing or impossible."""
    def need(key, ok, what):
        if key not in spec:
            raise ValueError(f"input: missing field {key!r}")
        if not ok(spec[key]):
            raise ValueError(f"input {key} {spec[key]!r} {what}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need("channels", lambda v: v == channels, f"must equal the first layer's {channels} input channels")
    need("normalization", lambda v: v in NORMALIZATIONS, f"must be one of {', '.join(NORMALIZATIONS)}")
    need("pixels", lambda v: v == "uint8 0-255 or float 0-1", "must be 'uint8 0-255 or float 0-1'")
    need("eps", lambda v: number(v) and 0 < v < 1, "must be a small positive number")
    need("clip", lambda v: number(v) and v > 0, "must be a positive number")
    need("pad_multiple", lambda v: isinstance(v, int) and v >= 1 and v % 2**pools == 0,
         f"must be a positive multiple of {2**pools} ({pools} max-pools)")
    # a pad pixel is a normalised pixel: anything outside the clipped range was never seen in training
    need("pad_value", lambda v: number(v) and abs(v) <= spec.get("clip", CLIP),
         f"must be a finite number within +-{spec.get('clip', CLIP):g} (a normalised pixel value)")
    need("pad_sides", lambda v: v == "bottom_right", "must be 'bottom_right'")
    need("crop_logits", lambda v: v is True, "must be true")


def _normalise(x: torch.Tensor, rule: str, eps: float, clip: float) -> torch.Tensor:
    """Training's ``A.Normalize`` on (N, C, H, W) pixels, as albumentations computes it: uint8 through a
    lookup table built in float64, float32 (16-bit images, 0..1) in float32 with OpenCV's per-rule quirks."""
    lut = x.dtype == torch.uint8
    if rule == "fixed":  # A.ToFloat, then A.Normalize(0.5, 0.5): (x - 0.5) * 2 in float32
        return ((x.float() / 255 if lut else x) - 0.5) * 2.0
    per_channel = rule.endswith("per_channel")
    dims = (2, 3) if per_channel else (1, 2, 3)
    wide = x.double()
    if rule.startswith("image"):
        offset = wide.mean(dims, keepdim=True)
        # OpenCV's per-channel path (cv2.meanStdDev) adds no eps
        scale = wide.std(dims, correction=0, keepdim=True) + (0.0 if per_channel and not lut else eps)
    else:
        offset = wide.amin(dims, keepdim=True)
        # cv2.normalize(NORM_MINMAX) for one range adds no eps
        scale = wide.amax(dims, keepdim=True) - offset + (0.0 if rule == "min_max" and not lut else eps)
    y = (wide - offset) / scale if lut else (x - offset.float()) / scale.float()
    return y.float().clamp_(-clip, clip)


def prepare(x, spec: dict, device=None) -> torch.Tensor:
    """Image batch ``x`` (N, C, H, W) -> the net's float32 input, normalised and padded.

    ``x``: a tensor or array of uint8 pixels (0..255), uint16 (0..65535) or floats in [0, 1] (what
    ``read_image`` gives for 8- and 16-bit files); for a file without preprocessing (``normalization``
    "none") float images already normalised as in training.
    """
    x = torch.as_tensor(x, device=device)
    channels, rule = spec["channels"], spec["normalization"]
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected images of shape (N, {channels}, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: no images to segment (N = 0)")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"images of size {x.shape[2]}x{x.shape[3]} (H x W): nothing to segment")
    if x.dtype == torch.uint16:
        x = x.float() / UINT16_MAX
    if x.dtype.is_floating_point:
        x = x.float()
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.flatten(1).any(1).nonzero()[0])
            raise ValueError(f"image {first} of the batch has NaN or Inf values; the model refuses non-finite input")
        if rule == "fixed" and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"float images must hold pixels in [0, 1] (got {float(x.min()):g} .. "
                             f"{float(x.max()):g}); pass uint8 for 0..255 pixels")
    elif x.dtype != torch.uint8:
        raise ValueError(f"unsupported image dtype {x.dtype}: give uint8, uint16 or float images")
    elif rule == "none":
        raise ValueError("this model stores no input normalisation (a format 1 .mbu file, or exported without one): "
                         "give float images normalised as in training, not uint8 pixels, or re-export the "
                         "checkpoint with --normalization")
    if rule != "none":
        x = _normalise(x, rule, float(spec["eps"]), float(spec["clip"]))
    m, h, w = int(spec["pad_multiple"]), x.shape[-2], x.shape[-1]
    return F.pad(x, (0, (-w) % m, 0, (-h) % m), value=float(spec["pad_value"])).contiguous()


def as_batch(image: np.ndarray) -> torch.Tensor:
    """An H x W x C image array (as the data readers return it) -> a (1, C, H, W) tensor, same dtype."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
