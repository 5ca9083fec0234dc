"""The packed model's input: preprocessing carried in the file, metadata covered by the checksum, bad batches refused."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from random_nets import calibrate
from safetensors import safe_open
from safetensors.numpy import save_file

from lightning_mbu import MBUNet, load_packed
from lightning_mbu.data.datamodule import build_transform
from lightning_mbu.data.dataset import read_image
from lightning_mbu.export import export_model
from lightning_mbu.ops.preprocess import NORMALIZATIONS, as_batch, input_spec, prepare

SAMPLE = Path(__file__).parents[1] / "lightning_mbu" / "data" / "sample" / "images"


def sample_images(k=4):
    return [read_image(p) for p in sorted(SAMPLE.glob("*.png"))[:k]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random net with batch-norm statistics of 6 sample images (masks that depend on the image), exported."""
    path = tmp_path_factory.mktemp("mbu") / "model.mbu"
    torch.manual_seed(2)
    net = calibrate(MBUNet("BBBBMMMMBBBB", base=4), torch.cat([normalised(im) for im in sample_images(6)]))
    export_model(net, path, normalization="image", train_size=(256, 256))
    return path, net


def normalised(image, rule="image"):
    """The image as training feeds it to the net: the data module's transform, no resize or augmentation."""
    out = build_transform(None, False, rule)(image=image)["image"]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None].float()


@pytest.mark.parametrize("rule", [r for r in NORMALIZATIONS if r != "none"])
def test_prepare_is_trainings_normalisation_bit_for_bit(rule):
    for image in sample_images(3):
        got = prepare(as_batch(image), input_spec(3, rule, 16))
        h, w = image.shape[:2]
        assert torch.equal(got[..., :h, :w], normalised(image, rule))


def test_packed_model_on_raw_pixels_gives_the_pytorch_nets_masks(exported):
    """The 4 sample images as uint8 pixels into the packed model = the PyTorch net on training's normalisation."""
    path, net = exported
    packed = load_packed(path, backend="cpu")
    assert packed.net.input["normalization"] == "image" and packed.net.input["train_size"] == [256, 256]
    agree = []
    for image in sample_images(4):
        raw = as_batch(image)
        assert raw.dtype == torch.uint8
        with torch.no_grad():
            reference = net(normalised(image)) > 0
        masks = packed(raw) > 0
        assert 0.05 < masks.float().mean() < 0.95  # a mask, not a constant
        agree.append((masks == reference).float().mean().item())
        # float pixels in [0, 1] (how 16-bit files read) are normalised as training normalises float images
        as_float = image.astype(np.float32) / 255
        with torch.no_grad():
            reference = net(normalised(as_float)) > 0
        agree.append(((packed(raw.float() / 255) > 0) == reference).float().mean().item())
    assert min(agree) > 0.999, agree  # only first-layer float rounding may differ (docs/format.md)


def test_odd_sizes_are_padded_and_cropped(exported):
    path, net = exported
    image = sample_images(1)[0][:37, :53]
    logits = load_packed(path, backend="cpu")(as_batch(image))
    assert logits.shape == (1, 1, 37, 53)
    with torch.no_grad():
        ref = net(torch.nn.functional.pad(normalised(image), (0, 11, 0, 11)))[..., :37, :53]
    assert ((logits > 0) == (ref > 0)).float().mean() > 0.999


@pytest.mark.parametrize("bad, message", [
    (torch.full((2, 3, 16, 16), 0.5).index_put_((torch.tensor(1), torch.tensor(0)), torch.tensor(float("nan"))),
     "image 1 of the batch has NaN or Inf"),
    (torch.full((1, 3, 16, 16), float("inf")), "image 0 of the batch has NaN or Inf"),
    (torch.zeros(0, 3, 16, 16, dtype=torch.uint8), r"empty batch.*N = 0"),
    (torch.zeros(1, 3, 0, 16, dtype=torch.uint8), "images of size 0x16"),
    (torch.zeros(1, 1, 16, 16, dtype=torch.uint8), r"images of shape \(N, 3, H, W\), got \(1, 1, 16, 16\)"),
    (torch.zeros(3, 16, 16, dtype=torch.uint8), r"shape \(N, 3, H, W\)"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.int32), "unsupported image dtype torch.int32"),
])
def test_bad_batches_are_refused(exported, bad, message):
    path, _ = exported
    with pytest.raises(ValueError, match=message):
        load_packed(path, backend="cpu")(bad)
    with pytest.raises(ValueError, match=message):  # the shared check every backend calls
        prepare(bad, input_spec(3, "image", 16))


def test_fixed_normalisation_refuses_floats_outside_0_1():
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\] \(got 0 .. 255\)"):
        prepare(torch.tensor([0.0, 255.0]).repeat(1, 3, 1, 1), input_spec(3, "fixed", 16))


# -- metadata edits -----------------------------------------------------------------------------------------

def edit(src, dst, fn):
    """Copy a .mbu file with its JSON edited by ``fn`` (tensor checksums untouched)."""
    with safe_open(str(src), framework="np") as f:
        meta = json.loads(f.metadata()["lightning_mbu"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    fn(meta)
    save_file(tensors, str(dst), metadata={"lightning_mbu": json.dumps(meta)})
    return dst


def _stage(meta, name):
    return next(s for s in meta["stages"] if s["name"] == name)


@pytest.mark.parametrize("change, field", [
    (lambda m: m["model"].update(config="MBBBMMMMBBBB"), "model"),
    (lambda m: m["model"].update(base=8), "model"),
    (lambda m: m["model"].update(stem_mode="binary"), "model"),
    (lambda m: m["input"].update(pad_value=1e9), "input"),
    (lambda m: m["input"].update(normalization="fixed"), "input"),
    (lambda m: m["input"].update(channels=1), "input"),
    (lambda m: m.update(default_encoding="xor"), "default_encoding"),
    (lambda m: _stage(m, "inc.conv1").update(pad_value=0.5), r"stages\.0 \(inc\.conv1\)"),
    (lambda m: m["sha256"].pop("outc.bias"), r"tensor outc\.bias has no checksum"),
    (lambda m: m.update(comment="hello"), "comment"),
    (lambda m: m.pop("metadata_sha256"), "metadata_sha256"),
])
def test_every_metadata_edit_is_refused_naming_the_file_and_field(exported, tmp_path, change, field):
    path, _ = exported
    bad = edit(path, tmp_path / "edited.mbu", change)
    with pytest.raises(ValueError, match=rf"edited\.mbu: .*{field}"):
        load_packed(bad, backend="cpu")


@pytest.mark.parametrize("change, message", [
    (lambda m: m["model"].update(config="MBBBMMMMBBBB"), r"model config 'MBBBMMMMBBBB'.*down1 is binary"),
    (lambda m: m["model"].update(base=8), r"model base 8.*inc\.conv1 has 4 output channels"),
    (lambda m: m["model"].update(stem_mode="binary"), r"stem_mode 'binary'.*inc\.conv2 is masked"),
    (lambda m: m["input"].update(pad_value=1e9), r"input pad_value 1000000000\.0 must be a finite number"),
    (lambda m: _stage(m, "inc.conv1").update(pad_value=float("nan")), r"inc\.conv1.*pad_value"),
])
def test_fields_are_checked_against_the_tensors_even_when_rehashed(exported, tmp_path, change, message):
    """Someone who recomputes the checksums still cannot load a file whose fields contradict its tensors."""
    from lightning_mbu.ops.format import metadata_digests

    path, _ = exported

    def change_and_rehash(meta):
        change(meta)
        meta["metadata_sha256"] = metadata_digests(meta)
    bad = edit(path, tmp_path / "rehashed.mbu", change_and_rehash)
    with pytest.raises(ValueError, match=rf"rehashed\.mbu: .*{message}"):
        load_packed(bad, backend="cpu")


def test_format_1_file_loads_with_a_warning_and_the_old_behaviour(exported, tmp_path):
    """A file from before the preprocessing field: float images normalised by the caller, as it always was."""
    path, net = exported

    def to_format_1(meta):
        meta["version"] = 1
        meta.pop("metadata_sha256")
        meta["input"] = {"layout": "NCHW float32", "pad_multiple": 16, "pad_value": 0.0,
                         "pad_sides": "bottom_right", "crop_logits": True}
    old = edit(path, tmp_path / "old.mbu", to_format_1)
    with pytest.warns(UserWarning, match=r"old\.mbu: .*format 1.*no input preprocessing.*re-export"):
        packed = load_packed(old, backend="cpu")
    assert packed.net.input["normalization"] == "none"
    image = sample_images(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = load_packed(path, backend="cpu")
    assert torch.equal(packed(normalised(image)) > 0, new(as_batch(image)) > 0)
    with pytest.raises(ValueError, match="stores no input normalisation"):
        packed(as_batch(image))  # raw pixels into a model that cannot normalise them: refused, not wrong


def test_the_cuda_backend_refuses_bad_batches_with_the_shared_check(exported):
    """The CUDA backend's input step is the same ``prepare`` (run here on the CPU, without building kernels)."""
    cuda = pytest.importorskip("lightning_mbu.ops.cuda")
    from lightning_mbu.ops.format import load

    backend = cuda.CUDAPackedNet.__new__(cuda.CUDAPackedNet)
    torch.nn.Module.__init__(backend)
    backend.net, backend.device = load(exported[0]), torch.device("cpu")
    with pytest.raises(ValueError, match="image 0 of the batch has NaN or Inf"):
        backend._pad(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="empty batch"):
        backend._pad(torch.zeros(0, 3, 16, 16, dtype=torch.uint8))
    image = sample_images(1)[0]
    assert torch.equal(backend._pad(as_batch(image)), prepare(as_batch(image), backend.net.input))
