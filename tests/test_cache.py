"""The dataset cache writer: same samples and order, resized, masks still binary, manifest honest, bad input named."""

import json

import numpy as np
import pytest
from PIL import Image

from lightning_mbu.data import SAMPLE_ROOT
from lightning_mbu.data.cache import write_cache
from lightning_mbu.data.dataset import read_sample
from lightning_mbu.data.layouts import find_folder, get_layout


def _dsb_root(tmp_path, n=3):
    """A tiny dsb2018-layout dataset: a colour image of 40x30 and two nucleus masks each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dsb" / "stage1_train"
    for i in range(n):
        d = root / f"id{i}"
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA").save(d / "images" / f"id{i}.png")
        for j, (top, left) in enumerate(((2, 2), (15, 20))):
            m = np.zeros((30, 40), np.uint8)
            m[top:top + 8, left:left + 10] = 255
            Image.fromarray(m).save(d / "masks" / f"m{j}.png")
    return tmp_path / "dsb"


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_cache_resizes_and_keeps_samples(tmp_path, fmt):
    src = _dsb_root(tmp_path)
    out = tmp_path / "cache"
    manifest = write_cache(src, out, size=(20, 24), fmt=fmt)
    samples = find_folder(out)
    assert [s.id for s in samples] == [s.id for s in get_layout(None, src).find(src)]
    for s, orig in zip(samples, get_layout(None, src).find(src)):
        image, mask = read_sample(s)
        assert image.shape == (20, 24, 3) and mask.shape == (20, 24)
        assert set(np.unique(mask)) == {0, 1}  # nearest-neighbour masks stay binary
        # the union of both nuclei survives: the foreground share is kept within a pixel row/column
        _, full = read_sample(orig)
        assert abs(mask.mean() - full.mean()) < 0.06
        if fmt == "png":  # lossless: the cached image is the area-averaged original
            ref = np.asarray(Image.fromarray(read_sample(orig)[0]).resize((24, 20), Image.Resampling.BOX))
            np.testing.assert_array_equal(image, ref)
    assert manifest["samples"] == 3 and manifest["format"] == fmt and manifest["size"] == [20, 24]
    on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "cache.json")
    assert manifest["bytes"] == on_disk
    assert json.loads((out / "cache.json").read_text()) == manifest


def test_grey_images_are_stored_with_one_channel(tmp_path):
    out = tmp_path / "cache"
    write_cache(SAMPLE_ROOT, out, size=32, fmt="png")
    s = find_folder(out)[0]
    grey = (read_sample(find_folder(SAMPLE_ROOT)[0])[0] == read_sample(find_folder(SAMPLE_ROOT)[0])[0][..., :1]).all()
    assert (Image.open(s.image).mode == "L") == bool(grey)
    assert read_sample(s)[0].shape == (32, 32, 3)  # read back as RGB like any image


def test_bad_inputs_are_named(tmp_path):
    src = _dsb_root(tmp_path, n=2)
    for m in (src / "stage1_train" / "id1" / "masks").glob("*.png"):
        m.unlink()
    with pytest.raises(ValueError, match="id1"):
        write_cache(src, tmp_path / "c1", size=16)
    manifest = write_cache(src, tmp_path / "c2", size=16, skip_bad=True)
    assert manifest["samples"] == 1 and len(manifest["skipped"]) == 1 and "id1" in manifest["skipped"][0]
    with pytest.raises(ValueError, match="format"):
        write_cache(src, tmp_path / "c3", fmt="webp")
    with pytest.raises(ValueError, match="source folder"):
        write_cache(src, src)


def test_16bit_images_are_cached_at_16_bits(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    grey = np.linspace(0, 4095, 30 * 40).round().astype(np.uint16).reshape(30, 40)
    Image.fromarray(grey).save(src / "images" / "g.tif")
    import cv2

    cv2.imwrite(str(src / "images" / "c.png"), np.stack([grey, grey[::-1], grey // 2], -1))
    for stem in ("g", "c"):
        Image.fromarray(np.eye(30, 40, dtype=np.uint8) * 255).save(src / "masks" / f"{stem}.png")
    with pytest.raises(ValueError, match="16-bit image and JPEG holds 8 bits; use --format png"):
        write_cache(src, tmp_path / "jpeg", size=(15, 20), fmt="jpeg")
    out = tmp_path / "png"
    write_cache(src, out, size=(15, 20), fmt="png")
    for orig, cached in zip(find_folder(src), find_folder(out)):
        image, _ = read_sample(cached)
        full, _ = read_sample(orig)
        # the area average of the 16-bit values, kept to 16 bits (1 / 65535), not cut to 8 (1 / 255)
        ref = full.reshape(15, 2, 20, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(image, ref, atol=1 / 65535)
        assert image.dtype == np.float32 and len(np.unique(image[..., 0])) > 200


def test_existing_output_is_replaced_only_with_force(tmp_path):
    src = _dsb_root(tmp_path, n=3)
    out = tmp_path / "cache"
    write_cache(src, out, size=16)
    before = (out / "cache.json").read_text()
    with pytest.raises(ValueError, match=f"cache output {out} holds a cache already; pass --force"):
        write_cache(src, out, size=16)
    assert (out / "cache.json").read_text() == before
    # --force replaces it, and a sample gone from the source does not linger in the copy
    import shutil

    shutil.rmtree(src / "stage1_train" / "id2")
    assert write_cache(src, out, size=16, force=True)["samples"] == 2
    assert [s.id for s in find_folder(out)] == ["id0", "id1"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files \\(notes.txt\\)"):
        write_cache(src, other, size=16, force=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_cache_command_prints_errors_not_tracebacks(tmp_path, capsys):
    from lightning_mbu.data.cache import main

    src = _dsb_root(tmp_path, n=2)
    main([str(src), str(tmp_path / "c"), "--size", "16"])
    with pytest.raises(SystemExit) as e:
        main([str(src), str(tmp_path / "c"), "--size", "16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: cache output" in err and "--force" in err and "Traceback" not in err
