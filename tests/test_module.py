import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mbu import MBUCallback, QuantSpec, SegmentationModule
from lightning_mbu.module import soft_dice_loss
from lightning_mbu.quant import MaskedWeight


def trainer(tmp_path, **kw):
    kw = dict(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path) | kw
    return pl.Trainer(**kw)


def data(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x[:, :1] > 0.3).float()  # learnable: the mask is a threshold of the first channel
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_soft_dice_loss():
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, 2:5, 2:6] = 1
    assert soft_dice_loss(torch.where(y > 0, 20.0, -20.0), y) < 1e-3
    assert soft_dice_loss(torch.where(y > 0, -20.0, 20.0), y) > 0.95


@pytest.mark.parametrize("config, kind", [(None, torch.optim.RMSprop), ("BBBBMMMMBBBB", torch.optim.Adam)])
def test_paper_optimizer_defaults(config, kind):
    opt = SegmentationModule(config, base=4).configure_optimizers()
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert group["lr"] == 1e-5 and group["weight_decay"] == 1e-8
    if kind is torch.optim.RMSprop:
        assert group["momentum"] == 0.9


def test_optimizer_overrides_and_callback_quantized_net_gets_adam(tmp_path):
    opt = SegmentationModule(None, base=4, optimizer="adam", lr=3e-3).configure_optimizers()
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 3e-3
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        SegmentationModule(base=4, optimizer="sgd")
    module = SegmentationModule(None, base=4)  # full precision until MBUCallback quantizes it in setup
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[MBUCallback("BBBBMMMMBBBB")])
    t.fit(module, data())
    assert type(t.optimizers[0]) is torch.optim.Adam and module.hparams.quant["config"] == "BBBBMMMMBBBB"


def test_gradient_clipping_defaults_to_one(tmp_path):
    module = SegmentationModule(None, base=4)
    module.trainer = trainer(tmp_path)
    opt = module.configure_optimizers()
    for p in module.parameters():
        p.grad = torch.full_like(p, 10.0)
    module.configure_gradient_clipping(opt)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-4)


def test_metrics_match_hand_computation(tmp_path):
    """Fixed logits in, torchmetrics' Dice (per image), IoU and F1 (pooled) out, as computed by hand."""
    y = torch.zeros(2, 1, 4, 4)
    y[0, 0, :2] = 1  # 8 foreground pixels
    y[1, 0, 0, 0] = 1  # 1 foreground pixel
    pred = torch.zeros_like(y, dtype=torch.bool)
    pred[0, 0, :1] = True  # 4 of image 0's 8
    pred[1, 0, 0, :2] = True  # image 1's pixel and one false positive
    module = SegmentationModule(None, base=4)
    module.forward = lambda x: torch.where(pred, 5.0, -5.0)
    out = trainer(tmp_path).test(module, DataLoader(TensorDataset(torch.zeros(2, 3, 4, 4), y), batch_size=2),
                                 verbose=False)[0]
    tp, fp, fn = 5, 1, 4
    assert out["test/dice"] == pytest.approx((2 * 4 / (4 + 8) + 2 * 1 / (2 + 1)) / 2)
    assert out["test/iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["test/f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["test/loss"] > 0


def test_fit_logs_metrics_and_checkpoint_rebuilds_quantized_net(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule("BBBBMMMMBBBB", base=4, lr=1e-2)
    t = trainer(tmp_path, max_epochs=3, callbacks=[MBUCallback(QuantSpec("BBBBMMMMBBBB", t=0.4))])
    x, y = next(iter(data(seed=1)))
    with torch.no_grad():
        loss_before = module.eval().loss(module(x), y)
    t.fit(module, data(16), data(seed=1))
    logged = t.callback_metrics
    for key in ("train/loss_epoch", "val/loss", "val/dice", "val/iou", "val/f1"):
        assert key in logged
    assert logged["val/loss"] < loss_before
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    loaded = SegmentationModule.load_from_checkpoint(path, map_location="cpu")
    assert str(loaded.net.config) == "BBBBMMMMBBBB"
    masked = dict(loaded.net.masked_quantizers())
    assert isinstance(masked["up_ct1"], MaskedWeight) and float(masked["up_ct1"].t) == pytest.approx(0.4)
    module.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), module(x))
