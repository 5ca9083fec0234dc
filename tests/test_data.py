import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_mbu.data import LAYOUTS, SAMPLE_ROOT, BadSampleError, SegmentationDataModule, detect_layout
from lightning_mbu.data.dataset import read_image, read_sample
from lightning_mbu.data.layouts import ISIC_INPUT, ISIC_TRUTH, find_dsb2018

DSB2018 = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(path)
    return path


def image(h=20, w=24, channels=3):
    return RNG.integers(0, 256, (h, w, channels) if channels else (h, w), dtype=np.uint8)


def blob(h=20, w=24, top=2, left=3, value=255):
    m = np.zeros((h, w), np.uint8)
    m[top:top + 5, left:left + 6] = value
    return m


def make_dsb2018(root: Path, n=6, h=20, w=24) -> Path:
    for i in range(n):
        d = root / "stage1_train" / f"id{i}"
        save(d / "images" / f"id{i}.png", image(h, w, 4))  # RGBA like the real set
        save(d / "masks" / "a.png", blob(h, w, 1, 1))
        save(d / "masks" / "b.png", blob(h, w, 10, 12))
    return root


def make_carvana(root: Path, n=6) -> Path:
    for i in range(n):
        save(root / "train" / f"car{i}_01.jpg", image())
        save(root / "train_masks" / f"car{i}_01_mask.gif", blob(value=1), "P")
    return root


def make_isic(root: Path, n=6) -> Path:
    for i in range(n):
        save(root / ISIC_INPUT / f"ISIC_{i:07d}.jpg", image())
        save(root / ISIC_TRUTH / f"ISIC_{i:07d}_segmentation.png", blob())
    (root / ISIC_INPUT / "LICENSE.txt").write_text("not an image")
    return root


def make_folder(root: Path, n=6, h=20, w=24) -> Path:
    for i in range(n):
        save(root / "images" / f"s{i}.png", image(h, w))
        save(root / "masks" / f"s{i}.png", blob(h, w), "1" if i % 2 else None)
    return root


MAKERS = {"dsb2018": make_dsb2018, "carvana": make_carvana, "isic": make_isic, "folder": make_folder}


@pytest.mark.parametrize("layout", list(MAKERS))
def test_each_layout_is_detected_and_batches(tmp_path, layout):
    root = MAKERS[layout](tmp_path / layout)
    assert detect_layout(root).name == layout
    dm = SegmentationDataModule(root, size=(16, 32), batch_size=2, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.layout.name == layout
    assert sorted(len(v) for v in dm.splits.values()) == [1, 1, 4]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 32) and x.dtype == torch.float32
    assert y.shape == (2, 1, 16, 32) and set(y.unique().tolist()) == {0.0, 1.0}


def test_dsb2018_masks_are_merged_by_union_and_rgba_becomes_rgb(tmp_path):
    root = make_dsb2018(tmp_path)
    sample = find_dsb2018(root)[0]
    img, mask = read_sample(sample)
    assert img.shape == (20, 24, 3)
    expected = (blob(top=1, left=1) | blob(top=10, left=12)) > 0
    np.testing.assert_array_equal(mask, expected.astype(np.uint8))


def test_default_sizes_are_the_papers(tmp_path):
    assert LAYOUTS["carvana"].size == (640, 959) and LAYOUTS["isic"].size == (480, 640)
    assert LAYOUTS["dsb2018"].size == (512, 512)
    dm = SegmentationDataModule(make_isic(tmp_path), augment=False)
    x, y = dm.dataset("all")[0]
    assert x.shape == (3, 480, 640) and y.shape == (1, 480, 640)


def test_native_size_folder_and_mismatched_sizes(tmp_path):
    root = make_folder(tmp_path)
    dm = SegmentationDataModule(root)
    x, _ = dm.dataset("all")[0]
    assert x.shape == (3, 20, 24) and dm.native_size == (20, 24)
    assert SegmentationDataModule(root, size=16).native_size is None
    save(root / "images" / "big.png", image(30, 30))
    save(root / "masks" / "big.png", blob(30, 30))
    with pytest.raises(ValueError, match="different sizes .*pass size"):
        SegmentationDataModule(root).setup()
    SegmentationDataModule(root, size=16).setup()


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    root = make_folder(tmp_path, n=20)

    def split(seed):
        dm = SegmentationDataModule(root, seed=seed)
        dm.setup()
        return {k: [s.id for s in v] for k, v in dm.splits.items()}

    a, b, c = split(0), split(0), split(1)
    assert a == b and a != c
    ids = a["train"] + a["val"] + a["test"]
    assert len(ids) == len(set(ids)) == 20 and (len(a["val"]), len(a["test"])) == (3, 3)


def test_training_split_is_augmented_evaluation_splits_are_not(tmp_path):
    dm = SegmentationDataModule(make_folder(tmp_path, n=10), val_fraction=0.3)
    torch.manual_seed(0)
    val = dm.dataset("val")
    assert torch.equal(val[0][0], val[0][0])
    train = dm.dataset("train")
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(5))


# -- bad input ------------------------------------------------------------------------------
def corrupt_image(root):
    bad = root / "images" / "s0.png"
    bad.write_bytes(b"this is not a png")
    return bad


def truncated_image(root):
    bad = root / "images" / "s0.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    return bad


def missing_mask(root):
    (root / "masks" / "s0.png").unlink()
    return root / "images" / "s0.png"


def size_mismatch(root):
    return save(root / "masks" / "s0.png", blob(12, 12))


def bad_mask_values(root):
    m = blob()
    m[0, 0] = 128
    return save(root / "masks" / "s0.png", m)


BAD = {"corrupt image": corrupt_image, "truncated image": truncated_image, "missing mask": missing_mask,
       "size mismatch": size_mismatch, "bad mask values": bad_mask_values}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_names_the_file_at_setup(tmp_path, kind):
    """setup, before any sample is read for training, finds every kind (mask values included)."""
    root = make_folder(tmp_path)
    bad = BAD[kind](root)
    with pytest.raises(BadSampleError, match=str(bad)):
        SegmentationDataModule(root, augment=False).setup()


@pytest.mark.parametrize("kind", list(BAD))
def test_skip_bad_warns_counts_and_drops_the_sample(tmp_path, kind):
    root = make_folder(tmp_path, n=8)
    bad = BAD[kind](root)
    dm = SegmentationDataModule(root, skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    messages = [str(w.message) for w in caught]
    assert any(str(bad) in m for m in messages)
    assert any("skipped 1 of 8 samples" in m for m in messages)
    assert len(dm.samples) == 7 and "s0" not in [s.id for s in dm.samples]


def test_every_bad_sample_is_listed(tmp_path):
    root = make_folder(tmp_path)
    missing_mask(root)
    size_mismatch_path = save(root / "masks" / "s1.png", blob(12, 12))
    with pytest.raises(BadSampleError, match="2 bad sample") as e:
        SegmentationDataModule(root).setup()
    assert "s0.png" in str(e.value) and str(size_mismatch_path) in str(e.value) and "--skip-bad" in str(e.value)


def test_colour_mask_is_rejected(tmp_path):
    root = make_folder(tmp_path)
    m = np.stack([blob(), blob(), np.zeros_like(blob())], -1)
    bad = save(root / "masks" / "s0.png", m)
    with pytest.raises(BadSampleError, match=f"{bad}.*colour"):
        SegmentationDataModule(root).setup()


def test_bad_mask_in_every_split_is_found_before_training(tmp_path):
    """One bad mask per split: all three are listed by setup, none waits for its epoch or the test."""
    root = make_folder(tmp_path, n=10)
    dm = SegmentationDataModule(root, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    picked = [dm.splits[split][0].id for split in ("train", "val", "test")]
    bad = []
    for sid in picked:
        m = blob()
        m[3, 4] = 7
        bad.append(save(root / "masks" / f"{sid}.png", m))
    with pytest.raises(BadSampleError, match="3 bad sample") as e:
        SegmentationDataModule(root, val_fraction=0.2, test_fraction=0.2).setup()
    assert all(f"mask {b} has values {{0, 7, 255}}" in str(e.value) for b in bad)


# -- 16-bit images --------------------------------------------------------------------------
def ramp16(h=20, w=24, top=65535):
    """A 16-bit image using far more than 256 levels, none of them clipped at 8 bits."""
    return np.linspace(0, top, h * w).round().astype(np.uint16).reshape(h, w)


def save16(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if a.ndim == 3:  # Pillow cannot write 16-bit colour
        import cv2

        assert cv2.imwrite(str(path), a[..., ::-1])
    else:
        Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("colour", [False, True])
def test_16bit_images_are_read_at_full_range(tmp_path, suffix, colour):
    grey = ramp16()
    a = np.stack([grey, grey[::-1], grey // 3], -1) if colour else grey
    path = save16(tmp_path / f"im{suffix}", a)
    assert Image.open(path).mode in (("RGB",) if colour else ("I;16", "I;16B", "I"))
    x = read_image(path)
    assert x.dtype == np.float32 and x.shape == (20, 24, 3)
    expected = a.astype(np.float32) / 65535
    np.testing.assert_array_equal(x, expected if colour else np.repeat(expected[..., None], 3, -1))
    assert len(np.unique(x[..., 0])) > 256  # not cut to 8 bits, not all 255


def test_16bit_dataset_trains_on_real_values(tmp_path):
    """A dim 12-bit-in-16 image (max 4095) is normalised from its real values, not clipped ones."""
    root = tmp_path / "d"
    for i in range(4):
        save16(root / "images" / f"s{i}.tif", ramp16(top=4095 - i))
        save16(root / "masks" / f"s{i}.png", (blob() > 0).astype(np.uint16) * 65535)  # a 16-bit mask too
    dm = SegmentationDataModule(root, augment=False, val_fraction=0.25, test_fraction=0)
    x, y = dm.dataset("all")[0]
    a = ramp16(top=4095).astype(np.float64)
    expected = (a - a.mean()) / a.std()  # albumentations adds 1e-4 to the std (of a / 65535 here): 0.6%
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-2, atol=1e-3)
    assert y.sum() == (blob() > 0).sum()
    fixed = SegmentationDataModule(root, augment=False, normalization="fixed", test_fraction=0)
    np.testing.assert_allclose(fixed.dataset("all")[0][0][0].numpy(), a / 65535 * 2 - 1, atol=1e-6)
    xb, _ = next(iter(SegmentationDataModule(root, size=16, batch_size=2, test_fraction=0).train_dataloader()))
    assert torch.isfinite(xb).all() and xb.shape == (2, 3, 16, 16)


def test_fixed_normalization_of_8bit_images_is_unchanged(tmp_path):
    root = make_folder(tmp_path, n=4)
    x, _ = SegmentationDataModule(root, augment=False, normalization="fixed").dataset("all")[0]
    raw = read_image(root / "images" / "s0.png").astype(np.float64)
    np.testing.assert_allclose(x.numpy(), raw.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)


def test_pixels_that_cannot_be_read_faithfully_are_refused_at_setup(tmp_path):
    root = make_folder(tmp_path, n=4)
    (root / "images" / "s0.png").unlink()
    bad = root / "images" / "s0.tif"
    Image.fromarray(ramp16().astype(np.float32)).save(bad)
    with pytest.raises(BadSampleError, match=f"image {bad} has floating-point pixels"):
        SegmentationDataModule(root).setup()
    Image.fromarray(ramp16().astype(np.int32) * 4).save(bad)  # 32-bit integers beyond 16 bits
    with pytest.raises(BadSampleError, match=f"image {bad} has pixel values 0..262140, outside 16 bits"):
        SegmentationDataModule(root).setup()


def test_empty_and_wrong_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentationDataModule(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="matches no known layout.*dsb2018.*carvana"):
        SegmentationDataModule(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing folder .*train_masks"):
        SegmentationDataModule(make_folder(tmp_path / "f"), layout="carvana").setup()
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    with pytest.raises(ValueError, match=f"no images .* in {tmp_path / 'e' / 'images'}"):
        SegmentationDataModule(tmp_path / "e").setup()
    (tmp_path / "d" / "stage1_train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image folders"):
        SegmentationDataModule(tmp_path / "d", layout="dsb2018").setup()
    with pytest.raises(ValueError, match="unknown layout 'voc'"):
        SegmentationDataModule(tmp_path / "d", layout="voc")


def test_builtin_sample(tmp_path):
    images = sorted((SAMPLE_ROOT / "images").glob("*.png"))
    assert len(images) == 24 and (SAMPLE_ROOT / "LICENSE.md").is_file()
    assert "CC0" in (SAMPLE_ROOT / "LICENSE.md").read_text()
    assert sum(p.stat().st_size for p in SAMPLE_ROOT.rglob("*") if p.is_file()) < 3e6
    dm = SegmentationDataModule(size=64, batch_size=8)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and 0 < y.mean() < 0.5


@pytest.mark.skipif(not DSB2018.is_dir(), reason="the real dsb2018 data is not here")
def test_real_dsb2018_images(tmp_path):
    samples = find_dsb2018(DSB2018)
    assert len(samples) > 500
    for s in samples[:3]:
        img, mask = read_sample(s)
        assert img.ndim == 3 and img.shape[2] == 3 and mask.shape == img.shape[:2]
        union = np.zeros(mask.shape, bool)
        for p in s.masks:
            union |= np.asarray(Image.open(p)) > 0
        np.testing.assert_array_equal(mask, union)
        assert 0 < mask.mean() < 1
