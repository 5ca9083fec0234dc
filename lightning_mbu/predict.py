"""Images to masks: run a trained checkpoint or a packed `.mbu` model over image files.

    model = load_model("model.mbu", backend="auto")     # or a SegmentationModule .ckpt
    summary = predict_files(model, ["images/", "more/*.jpg"], "masks/", overlay=True)

Images are read by the training data readers (``data.dataset.read_image``, so every format and
size they accept), resized to the size the net was trained at when the model records one (as
training and ``eval`` did), segmented, and the probabilities brought back to the image's own size.
Each image gives ``<stem>.png``: a 0/255 mask (a class index per pixel for several classes),
optionally ``<stem>_overlay.png`` and ``<stem>_prob.png`` (16-bit, probability * 65535) or
``<stem>_prob.npy`` (float32). Outputs are checked before any work (never an input, never an
existing file without ``force``) and each is written atomically.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.dataset import BadSampleError, read_image
from .data.layouts import IMAGE_SUFFIXES
from .files import atomic_path, check_output, writable_dir
from .ops.preprocess import NORMALIZATIONS, PAD_MULTIPLE, as_batch, input_spec, prepare

BACKENDS = ("auto", "cpu", "cuda")
PROBABILITY_FORMATS = ("png", "npy")
#: overlay: foreground tinted with this colour at this opacity
OVERLAY_COLOUR, OVERLAY_ALPHA = np.array([255, 40, 40], dtype=np.float32), 0.45


class CheckpointModel(nn.Module):
    """A checkpoint's MBUNet behind the packed model's interface: raw image batch -> logits at its size."""

    def __init__(self, net: nn.Module, spec: dict, device: torch.device):
        super().__init__()
        self.net, self.input, self.device = net.eval().to(device), spec, device

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(prepare(x, self.input, device=self.device))[..., :h, :w]


def _device(backend: str) -> torch.device:
    if backend == "cuda" and not torch.cuda.is_available():
        raise ValueError("backend cuda: torch sees no CUDA GPU here; use --backend cpu")
    return torch.device("cuda" if backend != "cpu" and torch.cuda.is_available() else "cpu")


def load_checkpoint_model(path: Path, backend: str = "auto", normalization: str | None = None) -> CheckpointModel:
    """The checkpoint's net with the preprocessing its export would store (``export.training_input``)."""
    from .checkpoint import load_checkpoint
    from .export import net_from_checkpoint, training_input

    ckpt = load_checkpoint(path)
    net = net_from_checkpoint(ckpt)
    normalization, size = training_input(ckpt, normalization)
    return CheckpointModel(net, input_spec(net.in_channels, normalization, PAD_MULTIPLE, size), _device(backend))


def load_packed_model(path: Path, backend: str = "auto") -> nn.Module:
    from .ops import load_packed

    if backend != "auto":
        return load_packed(path, backend=backend)
    if torch.cuda.is_available():
        try:
            return load_packed(path, backend="cuda")
        except (RuntimeError, OSError) as e:  # no kernel library here (no nvcc, no cached build): the CPU engine
            warnings.warn(f"cuda backend unavailable ({e}); using the cpu backend", stacklevel=2)
    return load_packed(path, backend="cpu")


def load_model(path: str | os.PathLike, backend: str = "auto", normalization: str | None = None) -> nn.Module:
    """A `.ckpt` (SegmentationModule) or `.mbu` (packed) model as a module raw image batch -> logits.

    ``backend``: "cpu", "cuda" or "auto" (cuda when there is a GPU). ``normalization`` replaces the rule
    the model records, for a model that records none (docs/format.md, "Input": ``input_of(model)``).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if path.suffix == ".ckpt":
        model = load_checkpoint_model(path, backend, normalization)
    elif path.suffix == ".mbu":
        model = load_packed_model(path, backend)
        if normalization is not None:
            model.net.input = {**model.net.input, "normalization": normalization}
    else:
        raise ValueError(f"model {path}: expected a .ckpt checkpoint or a .mbu packed model")
    if input_of(model)["normalization"] == "none":
        raise ValueError(f"{path} records no input normalisation (a format 1 .mbu file, or a checkpoint trained "
                         "without SegmentationDataModule): pass the rule training used, --normalization (e.g. image)")
    return model


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from files, folders (their images, not recursive) and glob patterns, in order, once each."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        elif path.is_file():
            files = [path]
        elif glob.has_magic(str(item)):
            files = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not files:
                raise ValueError(f"no files match {item}")
        else:
            raise FileNotFoundError(f"no such image, folder or pattern: {item}")
        found.update(dict.fromkeys(files))
    if not found:
        raise ValueError("no input images given")
    return list(found)


@dataclass
class Outputs:
    """The files one image produces."""

    mask: Path
    overlay: Path | None = None
    probabilities: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.mask, self.overlay, self.probabilities) if p is not None]


def plan_outputs(images: Sequence[Path], out_dir: Path, overlay: bool, probabilities: str | None,
                 protected: Sequence[Path] = (), force: bool = False) -> list[Outputs]:
    """Every output path, checked before anything runs: no clashes, no input overwritten, no file without force."""
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(f"unknown probabilities format {probabilities!r}; valid: {', '.join(PROBABILITY_FORMATS)}")
    plans, owner = [], {}
    for image in images:
        o = Outputs(out_dir / f"{image.stem}.png", out_dir / f"{image.stem}_overlay.png" if overlay else None,
                    out_dir / f"{image.stem}_prob.{probabilities}" if probabilities else None)
        for p in o.paths():
            if p in owner:
                raise ValueError(f"images {owner[p]} and {image} would both write {p}; "
                                 "segment them into different --out folders")
            owner[p] = image
            check_output(p, inputs=[*images, *protected], force=force)
        plans.append(o)
    return plans


def input_of(model: nn.Module) -> dict:
    """The preprocessing a model applies (a packed backend keeps it in its PackedNet)."""
    return model.input if isinstance(model, CheckpointModel) else model.net.input


def segment(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Probabilities (classes, H, W) float32 for one H x W x C image, at its own size.

    When the model records the size it was trained at, the image is resized to it first (area
    interpolation, as training did) and the probabilities are resized back (bilinear).
    """
    h, w = image.shape[:2]
    size = input_of(model).get("train_size")
    if size is not None and tuple(size) != (h, w):
        import cv2

        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[..., None]
    logits = model(as_batch(image)).float().cpu()
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs[0].numpy()


def mask_of(probs: np.ndarray) -> np.ndarray:
    """H x W uint8: 0/255 for one class (probability >= 0.5), the class index for several."""
    if probs.shape[0] == 1:
        return np.where(probs[0] >= 0.5, 255, 0).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


def overlay_of(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The RGB image with the foreground (every non-zero mask pixel) tinted."""
    rgb = image.astype(np.float32)
    fg = mask > 0
    rgb[fg] = rgb[fg] * (1 - OVERLAY_ALPHA) + OVERLAY_COLOUR * OVERLAY_ALPHA
    return rgb.round().astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _save_probabilities(path: Path, probs: np.ndarray) -> None:
    if path.suffix == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, probs[0] if probs.shape[0] == 1 else probs)
    elif probs.shape[0] == 1:
        _save_png(path, np.round(probs[0] * 65535).astype(np.uint16))
    else:
        raise ValueError(f"{path}: a 16-bit PNG holds one class; this model has {probs.shape[0]}: use npy")


@dataclass
class Summary:
    engine: str = ""
    images: int = 0
    seconds: float = 0.0  # reading, segmenting and writing, model loading excluded
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one message per image that could not be read

    @property
    def per_image(self) -> float:
        return self.seconds / max(self.images, 1)


def describe(model: nn.Module) -> str:
    """Which engine runs ``model``, for the summary line."""
    if isinstance(model, CheckpointModel):
        return f"PyTorch on {model.device.type}"
    return f"packed, {type(model).__module__.rsplit('.', 1)[-1]} backend"


def predict_files(model: nn.Module | str | os.PathLike, inputs: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, overlay: bool = False, probabilities: str | None = None,
                  force: bool = False, backend: str = "auto", normalization: str | None = None,
                  progress: bool = True) -> Summary:
    """Segment every image of ``inputs`` into ``out_dir``; returns the counts and timing.

    ``model``: a loaded model (``load_model``) or its path, loaded with ``backend`` (and ``normalization``)
    once every output has been checked (and never overwritten). An image the readers cannot read is listed in
    ``Summary.failed`` (its outputs are not written) and the others go on.
    """
    from tqdm.auto import tqdm

    images = find_images(inputs)
    out_dir = writable_dir(out_dir)
    protected = [] if isinstance(model, nn.Module) else [Path(model)]
    plans = plan_outputs(images, out_dir, overlay, probabilities, protected, force)
    if not isinstance(model, nn.Module):
        model = load_model(model, backend, normalization)
    summary = Summary(engine=describe(model))
    start = time.perf_counter()
    for image_path, plan in tqdm(list(zip(images, plans)), desc="predict", unit="image", disable=not progress):
        try:
            image = read_image(image_path)
        except BadSampleError as e:
            summary.failed.append(str(e))
            continue
        probs = segment(model, image)
        mask = mask_of(probs)
        _save_png(plan.mask, mask)
        if plan.overlay:
            _save_png(plan.overlay, overlay_of(image, mask))
        if plan.probabilities:
            _save_probabilities(plan.probabilities, probs)
        summary.images += 1
        summary.written += plan.paths()
    summary.seconds = time.perf_counter() - start
    return summary
