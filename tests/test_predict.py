"""`lightning-mbu predict` and lightning_mbu.predict: image files to masks with a checkpoint or a packed model."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from random_nets import calibrate, randomize

from lightning_mbu import MBUNet
from lightning_mbu.cli import main
from lightning_mbu.data.dataset import read_image
from lightning_mbu.export import export_checkpoint
from lightning_mbu.ops.preprocess import as_batch, input_spec, prepare
from lightning_mbu.predict import find_images, load_model, predict_files

SAMPLE = Path(__file__).parents[1] / "lightning_mbu" / "data" / "sample" / "images"


def _checkpoint(path, net, data=None):
    """A SegmentationModule checkpoint as Lightning writes it, with the datamodule's hyper-parameters."""
    hp = {"config": str(net.config), "base": net.base, "in_channels": 3, "num_classes": net.num_classes,
          "stem_mode": "masked", "masked_statistic": "max", "masked_t": 0.5}
    ckpt = {"hyper_parameters": hp, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    if data is not None:
        ckpt["datamodule_hyper_parameters"] = data
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ckpt, mbu) of one random net trained, as far as its records go, on 256x256 images normalised per image."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(2)
    x = torch.cat([prepare(as_batch(read_image(p)), input_spec(3, "image", 16)) for p in sorted(SAMPLE.glob("*.png"))[:6]])
    net = calibrate(MBUNet("BBBBMMMMBBBB", base=4), x)
    ckpt = _checkpoint(folder / "net.ckpt", net, {"normalization": "image", "size": 256})
    mbu = folder / "net.mbu"
    export_checkpoint(ckpt, mbu)
    return ckpt, mbu


@pytest.fixture
def images(tmp_path):
    """Three sample images in a folder: a PNG, a grey JPEG of an odd size, and a copy under another suffix."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = sorted(SAMPLE.glob("*.png"))[:2]
    Image.open(files[0]).save(folder / "a.png")
    Image.open(files[1]).convert("L").crop((0, 0, 75, 50)).save(folder / "b.jpg", quality=95)
    Image.open(files[1]).save(folder / "c.tif")
    return folder


def _mask(path):
    return np.asarray(Image.open(path))


def test_find_images_takes_files_folders_and_globs(images):
    assert [p.name for p in find_images([images])] == ["a.png", "b.jpg", "c.tif"]
    assert [p.name for p in find_images([str(images / "*.png"), images / "b.jpg", images])] == [
        "a.png", "b.jpg", "c.tif"]  # each once, in the order given
    with pytest.raises(ValueError, match=r"no files match .*\*\.bmp"):
        find_images([str(images / "*.bmp")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        find_images([images / "missing.png"])


def test_checkpoint_and_packed_model_give_the_same_masks_at_each_image_size(models, images, tmp_path):
    ckpt, mbu = models
    for model, out in ((ckpt, tmp_path / "ck"), (mbu, tmp_path / "mbu")):
        summary = predict_files(model, [images], out, overlay=True, probabilities="npy", backend="cpu",
                                progress=False)
        assert summary.images == 3 and not summary.failed and len(summary.written) == 9
    for name, size in (("a", (256, 256)), ("b", (50, 75)), ("c", (256, 256))):
        a, b = _mask(tmp_path / "ck" / f"{name}.png"), _mask(tmp_path / "mbu" / f"{name}.png")
        assert a.shape == size and a.dtype == np.uint8 and set(np.unique(a)) == {0, 255}
        assert (a == b).mean() > 0.999, name  # only first-layer float rounding may differ
        probs = np.load(tmp_path / "mbu" / f"{name}_prob.npy")
        assert probs.shape == size and np.array_equal(probs >= 0.5, b == 255)
        overlay = _mask(tmp_path / "mbu" / f"{name}_overlay.png")
        assert overlay.shape == (*size, 3)
        image = read_image(images / f"{name}.{dict(a='png', b='jpg', c='tif')[name]}")
        assert np.array_equal(overlay[b == 0], image[b == 0]) and (overlay[b == 255] != image[b == 255]).any()


def test_predict_resizes_to_the_training_size_and_back(tmp_path, images):
    """A net trained on 64x64 resized images sees 64x64 images; its mask comes back at the image's size."""
    net = randomize(MBUNet("BBBBBBBBBBBB", base=4), seed=8)
    ckpt = _checkpoint(tmp_path / "small.ckpt", net, {"normalization": "image", "size": [64, 64]})
    model = load_model(ckpt, backend="cpu")
    assert model.input["train_size"] == [64, 64]
    seen = []
    model.net.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    predict_files(model, [images / "a.png"], tmp_path / "out", progress=False)
    assert seen == [(1, 3, 64, 64)] and _mask(tmp_path / "out" / "a.png").shape == (256, 256)


def test_cli_predicts_with_a_checkpoint_and_a_packed_model(models, images, tmp_path, capsys):
    ckpt, mbu = models
    assert main(["predict", str(ckpt), str(images), "--out", str(tmp_path / "a"), "--backend", "cpu",
                 "--no-progress-bar"]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "ms per image" in out and "PyTorch on cpu" in out
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["a.png", "b.png", "c.png"]
    assert main(["predict", str(mbu), str(images / "*.png"), str(images / "b.jpg"), "--out", str(tmp_path / "b"),
                 "--overlay", "--probabilities", "png", "--backend", "cpu", "--no-progress-bar"]) == 0
    assert "packed, cpu backend" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "a.png", "a_overlay.png", "a_prob.png", "b.png", "b_overlay.png", "b_prob.png"]
    prob = Image.open(tmp_path / "b" / "a_prob.png")
    assert prob.mode.startswith("I;16") or prob.mode == "I"  # 16-bit
    assert np.array_equal(np.asarray(prob) >= 32768, _mask(tmp_path / "b" / "a.png") == 255)


def test_cli_refuses_to_overwrite_without_force_and_never_an_input(models, images, tmp_path, capsys):
    _, mbu = models
    out = tmp_path / "out"
    args = ["predict", str(mbu), str(images / "a.png"), "--out", str(out), "--backend", "cpu", "--no-progress-bar"]
    assert main(args) == 0
    first = (out / "a.png").stat().st_mtime_ns
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "a.png").stat().st_mtime_ns == first
    assert main([*args, "--force"]) == 0 and (out / "a.png").stat().st_mtime_ns != first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # the mask of images/a.png would be images/a.png: refused even with --force, the image is untouched
    before = (images / "a.png").read_bytes()
    assert main(["predict", str(mbu), str(images / "a.png"), "--out", str(images), "--force", "--backend", "cpu",
                 "--no-progress-bar"]) == 2
    assert "is the input" in capsys.readouterr().err and (images / "a.png").read_bytes() == before


def test_cli_names_a_corrupt_image_and_segments_the_others(models, images, tmp_path, capsys):
    _, mbu = models
    (images / "broken.png").write_bytes((images / "a.png").read_bytes()[:300])
    (images / "noise.jpg").write_bytes(os.urandom(2000))
    rc = main(["predict", str(mbu), str(images), "--out", str(tmp_path / "out"), "--backend", "cpu",
               "--no-progress-bar"])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and "noise.jpg" in err and "2 of 5 images" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_cli_errors_are_one_line(models, images, tmp_path, capsys):
    ckpt, _ = models
    assert main(["predict", str(tmp_path / "none.mbu"), str(images), "--out", str(tmp_path / "o")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["predict", str(images / "a.png"), str(images), "--out", str(tmp_path / "o")]) == 2
    assert "expected a .ckpt checkpoint or a .mbu packed model" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(tmp_path / "nothing*.png"), "--out", str(tmp_path / "o")]) == 2
    assert "no files match" in capsys.readouterr().err


def test_console_script_runs(models, images, tmp_path):
    _, mbu = models
    exe = Path(sys.executable).with_name("lightning-mbu")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lightning_mbu.cli"]
    proc = subprocess.run([*cmd, "predict", str(mbu), str(images / "a.png"), "--out", str(tmp_path / "o"),
                           "--backend", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 image" in proc.stdout and (tmp_path / "o" / "a.png").is_file()


def test_loaded_models_take_raw_pixels(models, images):
    """The models predict uses take uint8 batches themselves; as_batch is only the HWC -> NCHW view."""
    ckpt, mbu = models
    x = as_batch(read_image(images / "a.png"))
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 256, 256)
    a, b = load_model(ckpt, "cpu")(x), load_model(mbu, "cpu")(x)
    assert a.shape == b.shape == (1, 1, 256, 256) and ((a > 0) == (b > 0)).float().mean() > 0.999


def test_a_model_that_records_no_normalisation_needs_the_flag(models, images, tmp_path, capsys):
    """A checkpoint trained without the data module, and a format-1 .mbu file, say nothing about normalisation."""
    ckpt, _ = models
    bare = tmp_path / "bare.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    del payload["datamodule_hyper_parameters"]
    torch.save(payload, bare)
    legacy = Path(__file__).parents[1] / "docs" / "results" / "mbu_best-cpu128.mbu"  # written in format 1
    for model in (bare, legacy):
        args = ["predict", str(model), str(images / "a.png"), "--backend", "cpu", "--no-progress-bar"]
        with pytest.warns(UserWarning, match="records no data module|format 1"):
            assert main([*args, "--out", str(tmp_path / f"{model.stem}-1")]) == 2
        err = capsys.readouterr().err
        assert f"{model} records no input normalisation" in err and "--normalization" in err
        assert not (tmp_path / f"{model.stem}-1" / "a.png").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the format-1 file's
            assert main([*args, "--out", str(tmp_path / f"{model.stem}-2"), "--normalization", "image"]) == 0
        assert _mask(tmp_path / f"{model.stem}-2" / "a.png").shape == (256, 256)
