"""The .mbu file: round trip, and a clear refusal of every kind of bad file."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from random_nets import randomize

from lightning_mbu import MBUNet, load_packed
from lightning_mbu.cli import main
from lightning_mbu.export import export_model
from lightning_mbu.ops.cpu import CPUPackedNet
from lightning_mbu.ops.format import load


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbu") / "model.mbu"
    net = randomize(MBUNet("BBBBMMMMBBBB", base=4, num_classes=2), seed=11)
    return path, export_model(net, path, default_encoding="and"), net


def rewrite(src, dst, meta_fn=None, tensors_fn=None, rehash=True):
    """Copy a .mbu file with its JSON and/or tensors edited; ``rehash`` keeps the checksums consistent."""
    with safe_open(str(src), framework="np") as f:
        meta = json.loads(f.metadata()["lightning_mbu"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_fn:
        tensors = tensors_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    if rehash:
        meta["sha256"] = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors.items()}
    save_file(tensors, str(dst), metadata={"lightning_mbu": json.dumps(meta)})
    return dst


def stage(meta, name):
    return next(s for s in meta["stages"] if s["name"] == name)


def test_round_trip_keeps_every_tensor_and_the_graph(exported):
    path, packed, net = exported
    loaded = load(path)
    assert loaded.meta() == packed.meta()
    assert loaded.tensors().keys() == packed.tensors().keys()
    for k, v in packed.tensors().items():
        assert np.array_equal(loaded.tensors()[k], v) and loaded.tensors()[k].dtype == v.dtype, k
    x = torch.randn(2, 3, 37, 29)
    model = load_packed(path, backend="cpu")
    assert model.encoding == "and"  # the file's default
    assert torch.equal(model(x), CPUPackedNet(packed, encoding="and")(x))
    with torch.no_grad():
        assert ((model(x) > 0) == (net(x) > 0)).float().mean() > 0.999


def test_metadata_describes_the_format(exported):
    path, _, _ = exported
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["lightning_mbu"])
    assert meta["format"] == "lightning-mbu-packed" and meta["version"] == 2
    assert meta["model"]["config"] == "BBBBMMMMBBBB" and meta["input"]["pad_multiple"] == 16
    assert [s["kind"] for s in meta["stages"]][:3] == ["first_conv", "binary_conv", "max_pool"]
    assert stage(meta, "up_ct4") == {"kind": "tconv_concat", "name": "up_ct4", "src": "up3.conv2", "skip": "inc.conv2",
                                     "mode": "masked", "cin_segments": [8], "cout": 4}
    assert stage(meta, "up4.conv1")["cin_segments"] == [4, 4]


def test_missing_and_foreign_files_are_refused(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load(tmp_path / "nope.mbu")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors: a safetensors file without lightning-mbu metadata"):
        load(plain)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        load_packed(exported[0], backend="tpu")


def test_truncated_file_is_refused(exported, tmp_path):
    data = exported[0].read_bytes()
    for cut in (len(data) - 100, 20, 4):
        bad = tmp_path / "cut.mbu"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cut\.mbu: not a readable \.mbu file \(truncated or corrupt"):
            load(bad)


def test_tampered_tensor_is_named(exported, tmp_path):
    data = bytearray(exported[0].read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    begin, _ = json.loads(data[8:8 + header_len])["down1.conv1.planes"]["data_offsets"]
    data[8 + header_len + begin] ^= 0x10
    bad = tmp_path / "tampered.mbu"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tampered.mbu: tensor down1.conv1.planes fails its SHA-256 check"):
        load(bad)
    # consistent checksums do not make an edited stage acceptable: a weight both +1 and -1
    def overlap(t):
        t["up_ct1.planes"] = t["up_ct1.planes"].copy()
        t["up_ct1.planes"][1] |= t["up_ct1.planes"][0]
        return t
    with pytest.raises(ValueError, match="up_ct1.planes: a weight is both"):
        load(rewrite(exported[0], tmp_path / "overlap.mbu", tensors_fn=overlap))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(version=3), "written in format version 3; this lightning-mbu reads versions 1 and 2"),
    (lambda m: m.update(format="onnx"), "format is 'onnx'"),
    (lambda m: m.pop("stages"), "metadata: missing field 'stages'"),
    (lambda m: stage(m, "down3.conv1").update(cout=40),
     r"tensor down3.conv1.planes: expected int32 of shape \(1, 64, 3, 3, 1\)"),
    (lambda m: stage(m, "up2.conv1").update(cin_segments=[32]), r"stage 'up2.conv1': cin_segments \[32\] do not match"),
    (lambda m: stage(m, "up_ct2").update(skip="down9.conv2"), "stage 'up_ct2' reads 'down9.conv2', which no earlier"),
    (lambda m: stage(m, "down1.pool").update(kind="avg_pool"), "unknown kind 'avg_pool'"),
    (lambda m: stage(m, "down2.conv2").update(mode="int4"), "weight mode 'int4' has no bit-plane form"),
    (lambda m: m["model"].update(in_channels=1), "in_channels/num_classes do not match"),
    (lambda m: m["input"].update(pad_multiple=8), "pad_multiple 8 must be a positive multiple of 16"),
    (lambda m: m.update(sha256={}), "has no checksum"),
])
def test_inconsistent_metadata_is_refused(exported, tmp_path, edit, message):
    bad = rewrite(exported[0], tmp_path / "bad.mbu", meta_fn=edit, rehash=False)
    with pytest.raises(ValueError, match=r"bad\.mbu: .*" + message):
        load(bad)


def _retype(t):
    t["down2.conv2.direction"] = t["down2.conv2.direction"].astype(np.int32)
    return t


def _reshape(t):
    t["up1.conv1.theta"] = t["up1.conv1.theta"][:16].copy()
    return t


def _extra(t):
    t["outc.scale"] = np.ones(2, np.float32)
    return t


def _drop(t):
    del t["outc.bias"]
    return t


@pytest.mark.parametrize("edit,message", [
    (_retype, r"tensor down2.conv2.direction: expected int8 of shape \(32,\), got int32"),
    (_reshape, r"tensor up1.conv1.theta: expected int32 of shape \(32,\), got int32 \(16,\)"),
    (_extra, r"tensors \['outc.scale'\] belong to no stage"),
    (_drop, "stage 'outc' .*missing field 'bias'"),
])
def test_tensors_that_do_not_fit_their_stage_are_refused(exported, tmp_path, edit, message):
    bad = rewrite(exported[0], tmp_path / "bad.mbu", tensors_fn=edit)
    with pytest.raises(ValueError, match=r"bad\.mbu: .*" + message):
        load(bad)


def _checkpoint(path, net, config):
    hp = {"config": config, "base": net.base, "in_channels": 3, "num_classes": net.num_classes, "stem_mode": "masked",
          "masked_statistic": "max", "masked_t": 0.5, "lr": 1e-3}
    torch.save({"hyper_parameters": hp, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_cli_exports_a_checkpoint_and_refuses_what_it_cannot(tmp_path, capsys):
    torch.manual_seed(0)
    net = randomize(MBUNet("MBMBMBMBMBMB", base=4, num_classes=2), seed=2)
    ckpt = _checkpoint(tmp_path / "m.ckpt", net, "MBMBMBMBMBMB")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.mbu"), "--encoding", "xor"]) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.allclose(load_packed(tmp_path / "m.mbu")(x), net(x), atol=1e-4)
    assert main(["export", str(ckpt)]) == 2  # the default output name exists: not overwritten without --force
    assert main(["export", str(ckpt), "--force"]) == 0 and (tmp_path / "m.mbu").exists()

    fp = _checkpoint(tmp_path / "fp.ckpt", MBUNet(None, base=4), None)
    assert main(["export", str(fp), "-o", str(tmp_path / "fp.mbu")]) == 2
    assert "full-precision model" in capsys.readouterr().err
    kbit = _checkpoint(tmp_path / "k.ckpt", MBUNet("BBBB4444BBBB", base=4), "BBBB4444BBBB")
    assert main(["export", str(kbit), "-o", str(tmp_path / "k.mbu")]) == 2
    assert "cannot export layers up_ct1 (int4)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
