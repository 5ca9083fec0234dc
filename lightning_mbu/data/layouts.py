"""Dataset layouts: where a dataset keeps its images and masks, and the size the paper scales it to.

Each layout turns a data root into a sorted list of ``Sample``s (an image and the
mask files whose union is its foreground). A missing mask is not an error here:
the sample keeps ``masks=()`` and the path that was looked for, and the checks in
``dataset.py`` report it (or skip it) together with every other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    masks: tuple[Path, ...]  # merged by union; empty when the mask is missing
    expected_mask: Path  # where the mask was looked for, to name it in errors


@dataclass(frozen=True)
class Layout:
    name: str
    #: (height, width) the paper scales this dataset to (Table A.3); None keeps the native size
    size: tuple[int, int] | None
    #: the folders that identify this layout, relative to the data root (for detection and errors)
    signature: tuple[str, ...]
    find: Callable[[Path], list[Sample]]
    description: str

    def matches(self, root: Path) -> bool:
        return all((root / s).is_dir() for s in self.signature)


def _require_dirs(root: Path, layout: str, *dirs: str) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    for d in dirs:
        if not (root / d).is_dir():
            raise FileNotFoundError(f"{root} is not a {layout!r} dataset: missing folder {root / d} "
                                    f"(expected {LAYOUTS[layout].description})")


def _images_in(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no images ({', '.join(suffixes)}) in {folder}")
    return files


def _dsb2018_dir(root: Path) -> Path:
    """The folder holding one sub-folder per image: ``root/stage1_train`` or ``root`` itself."""
    return root / "stage1_train" if (root / "stage1_train").is_dir() else root


def find_dsb2018(root: Path) -> list[Sample]:
    base = _dsb2018_dir(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    ids = sorted(d for d in base.iterdir() if d.is_dir())
    if not ids:
        raise ValueError(f"no image folders in {base} (expected {LAYOUTS['dsb2018'].description})")
    samples = []
    for d in ids:
        image = d / "images" / f"{d.name}.png"
        if not image.is_file():
            raise FileNotFoundError(f"{d} is not a dsb2018 image folder: missing {image}")
        masks = tuple(sorted((d / "masks").glob("*.png"))) if (d / "masks").is_dir() else ()
        samples.append(Sample(d.name, image, masks, d / "masks" / "*.png"))
    return samples


def find_carvana(root: Path) -> list[Sample]:
    _require_dirs(root, "carvana", "train", "train_masks")
    samples = []
    for image in _images_in(root / "train", (".jpg",)):
        mask = root / "train_masks" / f"{image.stem}_mask.gif"
        samples.append(Sample(image.stem, image, (mask,) if mask.is_file() else (), mask))
    return samples


ISIC_INPUT = "ISIC2018_Task1-2_Training_Input"
ISIC_TRUTH = "ISIC2018_Task1_Training_GroundTruth"


def find_isic(root: Path) -> list[Sample]:
    _require_dirs(root, "isic", ISIC_INPUT, ISIC_TRUTH)
    samples = []
    for image in _images_in(root / ISIC_INPUT, (".jpg",)):
        mask = root / ISIC_TRUTH / f"{image.stem}_segmentation.png"
        samples.append(Sample(image.stem, image, (mask,) if mask.is_file() else (), mask))
    return samples


def find_folder(root: Path) -> list[Sample]:
    _require_dirs(root, "folder", "images", "masks")
    masks = {}
    for m in (root / "masks").iterdir():
        if m.suffix.lower() in IMAGE_SUFFIXES:
            masks.setdefault(m.stem, []).append(m)
    samples = []
    for image in _images_in(root / "images"):
        found = masks.get(image.stem, [])
        if len(found) > 1:
            raise ValueError(f"image {image} has several masks with its stem: {', '.join(map(str, sorted(found)))}")
        samples.append(Sample(image.stem, image, tuple(found), root / "masks" / f"{image.stem}.*"))
    return samples


LAYOUTS: dict[str, Layout] = {
    "dsb2018": Layout("dsb2018", (512, 512), ("stage1_train",), find_dsb2018,
                      "stage1_train/<id>/images/<id>.png and stage1_train/<id>/masks/*.png"),
    "carvana": Layout("carvana", (640, 959), ("train", "train_masks"), find_carvana,
                      "train/<id>.jpg and train_masks/<id>_mask.gif"),
    "isic": Layout("isic", (480, 640), (ISIC_INPUT, ISIC_TRUTH), find_isic,
                   f"{ISIC_INPUT}/<id>.jpg and {ISIC_TRUTH}/<id>_segmentation.png"),
    "folder": Layout("folder", None, ("images", "masks"), find_folder,
                     "images/<stem>.<ext> and masks/<stem>.<ext> with matching stems"),
}


def detect_layout(root: Path) -> Layout:
    """The layout whose folders ``root`` has (a bare dsb2018 ``stage1_train`` folder counts too)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    found = [lay for lay in LAYOUTS.values() if lay.matches(root)]
    if not found and any((d / "images").is_dir() and (d / "masks").is_dir() for d in root.iterdir() if d.is_dir()):
        found = [LAYOUTS["dsb2018"]]
    if len(found) != 1:
        expected = "; ".join(f"{lay.name}: {lay.description}" for lay in LAYOUTS.values())
        what = "matches several layouts" if found else "matches no known layout"
        raise FileNotFoundError(f"{root} {what}; pass layout=... (--layout). Layouts: {expected}")
    return found[0]


def get_layout(name: str | None, root: Path) -> Layout:
    if name is None:
        return detect_layout(root)
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
