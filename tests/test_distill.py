"""FP initialisation and distillation: weights copied exactly, teacher frozen and out of checkpoints, loss as defined."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lightning_mbu.callbacks import MBUCallback
from lightning_mbu.distill import distillation_loss, load_fp_weights
from lightning_mbu.config import QuantSpec
from lightning_mbu.model import MBUNet
from lightning_mbu.module import SegmentationModule


def _save(module, path):
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture
def fp_ckpt(tmp_path):
    torch.manual_seed(0)
    return _save(SegmentationModule(None, base=4), tmp_path / "fp.ckpt")


def test_load_fp_weights_copies_every_weight_and_keeps_the_threshold(fp_ckpt):
    fp = torch.load(fp_ckpt, weights_only=True)["state_dict"]
    net = MBUNet(QuantSpec("BBBBMMMMBBBB", t=0.3), base=4)
    load_fp_weights(net, fp_ckpt)
    for k, v in net.state_dict().items():
        if k.endswith("weight_quantizer.t"):
            assert float(v) == pytest.approx(0.3)
        else:
            assert torch.equal(v, fp[f"net.{k}"]), k


def test_load_fp_weights_refuses_other_widths_and_quantized_sources(fp_ckpt, tmp_path):
    with pytest.raises(ValueError, match="base=4"):
        load_fp_weights(MBUNet("B" * 12, base=8), fp_ckpt)
    quantized = _save(SegmentationModule("BBBBMMMMBBBB", base=4), tmp_path / "q.ckpt")
    with pytest.raises(ValueError, match="full precision"):
        load_fp_weights(MBUNet("B" * 12, base=4), quantized)
    with pytest.raises(FileNotFoundError):
        load_fp_weights(MBUNet("B" * 12, base=4), tmp_path / "missing.ckpt")


def test_distillation_loss_is_soft_target_bce():
    s, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert torch.allclose(distillation_loss(s, t), F.binary_cross_entropy_with_logits(s, torch.sigmoid(t)))
    assert torch.allclose(distillation_loss(s, t, 2.0),
                          4 * F.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2)))


def test_distillation_trains_the_student_only(fp_ckpt):
    module = SegmentationModule("BBBBMMMMBBBB", teacher=str(fp_ckpt), kd_weight=0.5, base=4, lr=1e-2)
    assert not any(k.startswith("teacher") or "_teacher" in k for k in module.state_dict())
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in module.net.parameters())
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = module.net.inc.conv1.conv.weight.detach().clone()
    x = torch.randn(4, 3, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.5).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[MBUCallback("BBBBMMMMBBBB")])
    trainer.fit(module, train_dataloaders=loader)
    assert "train/kd" in trainer.callback_metrics
    assert not torch.equal(module.net.inc.conv1.conv.weight, student_before)
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert module.hparams.quant["config"] == "BBBBMMMMBBBB" and module.hparams.kd_weight == 0.5
