"""The CPU packed engine against the folded float reference: bit-exact at every layer, both encodings."""

import numpy as np
import pytest
import torch
from random_nets import randomize, sampled_configs

from lightning_mbu import MBUNet, QuantSpec
from lightning_mbu.export import fold, pack_folded
from lightning_mbu.ops.bits import channel_mask, unpack_bits
from lightning_mbu.ops.cpu import CPUPackedNet
from lightning_mbu.ops.graph import ENCODINGS


def assert_engine_matches_reference(net: MBUNet, x: torch.Tensor, encoding: str) -> None:
    folded = fold(net)
    packed = pack_folded(folded)
    ref = folded.run(x)
    got = CPUPackedNet(packed, encoding=encoding).run(x)
    segs = packed.segments()
    for st in packed.stages[:-1]:
        words = got[st.name]
        assert words.dtype == np.int32 and words.shape[-1] == channel_mask(segs[st.name]).shape[0], st.name
        assert not (words & ~channel_mask(segs[st.name])).any(), f"{st.name}: padding bits set"
        expected = (ref[st.name] > 0).permute(0, 2, 3, 1).numpy()
        bits = unpack_bits(words, segs[st.name])
        assert np.array_equal(bits, expected), f"{st.name}: {np.mean(bits != expected):.4%} of bits differ"
    logits = got[packed.stages[-1].name]
    assert torch.allclose(logits, ref[packed.stages[-1].name], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("config", sampled_configs(5, seed=2))
def test_engine_is_bit_exact_on_sampled_configs(config, encoding):
    torch.manual_seed(1)
    net = randomize(MBUNet(config, base=4, num_classes=2), seed=int(config.replace("B", "0").replace("M", "1"), 2))
    assert_engine_matches_reference(net, torch.randn(2, 3, 97, 131), encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_engine_with_multiword_segments_and_binary_stem(encoding):
    """base 12: 12..192 channels, so padded channels inside concatenations and several words per pixel."""
    torch.manual_seed(2)
    net = randomize(MBUNet(QuantSpec("MBBMBMMBMBBM", stem="binary", t=0.3), base=12, num_classes=1), seed=5)
    assert_engine_matches_reference(net, torch.randn(3, 3, 33, 50), encoding)


def test_encodings_agree_and_forward_crops_to_input_size():
    torch.manual_seed(3)
    net = randomize(MBUNet("BMBMBMBMBMBM", base=4, num_classes=3), seed=7)
    packed = pack_folded(fold(net))
    x = torch.randn(1, 3, 21, 40)
    y_xor = CPUPackedNet(packed, encoding="xor")(x)
    y_and = CPUPackedNet(packed, encoding="and", threads=1)(x)
    assert y_xor.shape == (1, 3, 21, 40)
    assert torch.equal(y_xor, y_and)
    with pytest.raises(ValueError, match="unknown encoding 'nand'"):
        CPUPackedNet(packed, encoding="nand")
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        CPUPackedNet(packed)(torch.randn(1, 4, 16, 16))


def synthetic_nuclei(n: int, h: int, w: int, seed: int):
    """Images of bright disks on noise, with their masks: a task a few steps of training can start on."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.zeros(n, 1, h, w)
    for i in range(n):
        for _ in range(6):
            cy, cx, r = torch.rand(3, generator=g) * torch.tensor([h, w, 6.0]) + torch.tensor([0, 0, 3.0])
            masks[i, 0] = torch.maximum(masks[i, 0], ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float())
    images = masks.expand(-1, 3, -1, -1) * 1.5 - 0.75 + 0.5 * torch.randn(n, 3, h, w, generator=g)
    return images, masks


def test_exported_checkpoint_reproduces_the_trained_nets_masks(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    module_mod = pytest.importorskip("lightning_mbu.module")
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_mbu import MBUCallback, load_packed
    from lightning_mbu.cli import main

    torch.manual_seed(0)
    config = "BBBBMMMMBBBB"
    model = module_mod.SegmentationModule(quant=config, base=8, lr=1e-3)
    trainer = pl.Trainer(max_steps=8, callbacks=[MBUCallback(config)], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(*synthetic_nuclei(16, 64, 64, seed=0)), batch_size=4))
    ckpt, out = tmp_path / "trained.ckpt", tmp_path / "trained.mbu"
    trainer.save_checkpoint(ckpt)
    assert main(["export", str(ckpt), "-o", str(out)]) == 0

    images, _ = synthetic_nuclei(3, 97, 131, seed=1)
    with torch.no_grad():
        expected = model.net.eval()(images) > 0
    for encoding in ENCODINGS:
        got = load_packed(out, backend="cpu", encoding=encoding)(images) > 0
        agreement = (got == expected).float().mean().item()
        assert agreement >= 0.999, f"{encoding}: masks agree on {agreement:.5%} of pixels"
