import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_mbu import MBUCallback, MBUNet, QuantSpec
from lightning_mbu.callbacks import cosine_schedule, linear_schedule
from lightning_mbu.quant import MaskedWeight


class TinySeg(pl.LightningModule):
    def __init__(self, quant=None):
        super().__init__()
        self.net = MBUNet(quant, base=4)
        self.save_hyperparameters(ignore=["quant"])
        self.hparams["quant"] = self.net.quant.as_dict()

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    y = (torch.rand(8, 1, 16, 16, generator=g) > 0.5).float()
    return DataLoader(TensorDataset(x, y), batch_size=4)


def trainer(tmp_path, epochs, callback, **kw):
    return pl.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=CSVLogger(tmp_path, name="log"),
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        default_root_dir=tmp_path, **kw,
    )


def test_schedules():
    lin, cos = linear_schedule(0.6, 4), cosine_schedule(0.6, 4)
    assert [lin(e) for e in range(6)] == pytest.approx([0, 0.15, 0.3, 0.45, 0.6, 0.6])
    assert cos(0) == 0 and cos(2) == pytest.approx(0.3) and cos(4) == cos(9) == 0.6
    assert cos(1) < lin(1)
    with pytest.raises(ValueError, match="unknown mask_schedule 'step'"):
        MBUCallback("BBBBMMMMBBBB", mask_schedule="step")


def test_callback_quantizes_fp_model_logs_sparsity_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = TinySeg()  # built in full precision: the callback converts it
    cb = MBUCallback(QuantSpec("BBBBMMMMBBBB", t=0.5), mask_schedule="linear", warmup_epochs=4)
    t1 = trainer(tmp_path, 2, cb)
    t1.fit(model, loader())

    assert model.net.is_quantized and str(model.net.config) == "BBBBMMMMBBBB"
    assert model.hparams.quant == QuantSpec("BBBBMMMMBBBB").as_dict()  # written once, as the spec
    assert cb.t == pytest.approx(0.125)  # epoch 1 of a 4-epoch ramp
    metrics = t1.logged_metrics
    for layer in ("stem", "up_ct1", "up_ct4"):
        zero = metrics[f"sparsity/{layer}/zero"]
        total = zero + metrics[f"sparsity/{layer}/neg"] + metrics[f"sparsity/{layer}/pos"]
        assert 0 < zero < 1 and total == pytest.approx(1.0)
    assert "sparsity/down1/zero" not in metrics  # binary layers have no zeros to report
    # the CSV logger wrote them too
    csv = (tmp_path / "log" / "version_0" / "metrics.csv").read_text()
    assert "sparsity/up_ct2/zero" in csv and "mbu/t" in csv

    ckpt = tmp_path / "two.ckpt"
    t1.save_checkpoint(ckpt)

    # resume in a fresh process-like setting: a new FP model and a new callback
    model2 = TinySeg()
    cb2 = MBUCallback(QuantSpec("BBBBMMMMBBBB", t=0.5), mask_schedule="linear", warmup_epochs=4)
    t2 = trainer(tmp_path, 3, cb2)
    t2.fit(model2, loader(), ckpt_path=ckpt)
    assert t2.current_epoch == 3
    assert cb2.t == pytest.approx(0.25)  # epoch 2 of the ramp: the schedule continued
    qs = [q for _, q in model2.net.masked_quantizers()]
    assert qs and all(isinstance(q, MaskedWeight) and float(q.t) == pytest.approx(0.25) for q in qs)


def test_quantized_checkpoint_reloads_with_masking_state(tmp_path):
    model = TinySeg()
    cb = MBUCallback(QuantSpec("MBBBBBBBBBBB", t=0.3))
    t = trainer(tmp_path, 1, cb)
    t.fit(model, loader())
    ckpt = tmp_path / "q.ckpt"
    t.save_checkpoint(ckpt)
    loaded = TinySeg.load_from_checkpoint(ckpt)
    assert str(loaded.net.config) == "MBBBBBBBBBBB"
    x = torch.randn(2, 3, 16, 16)
    model.eval(), loaded.eval()
    assert torch.equal(model.net(x), loaded.net(x))
    assert math.isclose(float(loaded.net.down1.conv.conv1.conv.weight_quantizer.t), 0.3, rel_tol=1e-6)


def test_resume_with_other_config_is_refused(tmp_path):
    model = TinySeg()
    t = trainer(tmp_path, 1, MBUCallback("MBBBBBBBBBBB"))
    t.fit(model, loader())
    ckpt = tmp_path / "a.ckpt"
    t.save_checkpoint(ckpt)
    # differs only in a layer without quantizer state, so the model weights load and the callback objects
    t2 = trainer(tmp_path, 2, MBUCallback("MBBBBBBBBBB8"))
    with pytest.raises(ValueError, match="trained with layer config MBBBBBBBBBBB"):
        t2.fit(TinySeg(), loader(), ckpt_path=ckpt)


def test_callback_requires_one_mbunet(tmp_path):
    class NoNet(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="exactly one MBUNet inside NoNet, found 0"):
        MBUCallback("B" * 12).setup(None, NoNet(), "fit")


def test_callback_without_spec_schedules_the_modules_own_net(tmp_path):
    model = TinySeg(QuantSpec("BBBBMMMMBBBB", statistic="mean", t=0.6))
    cb = MBUCallback(mask_schedule="linear", warmup_epochs=4)
    trainer(tmp_path, 2, cb).fit(model, loader())
    assert cb.quant == model.net.quant
    assert cb.t == pytest.approx(0.15)  # epoch 1 of a ramp to the net's own t = 0.6
    qs = [q for _, q in model.net.masked_quantizers()]
    assert qs and all(q.statistic == "mean" and float(q.t) == pytest.approx(0.15) for q in qs)


def test_callback_without_spec_refuses_a_full_precision_net(tmp_path):
    with pytest.raises(ValueError, match=r"quant=None.*full precision"):
        trainer(tmp_path, 1, MBUCallback()).fit(TinySeg(), loader())


@pytest.mark.parametrize("field,value,built", [("statistic", "mean", "max"), ("stem", "binary", "masked"),
                                               ("config", "MBBBBBBBBBBB", "BBBBMMMMBBBB")])
def test_callback_spec_conflicting_with_the_built_net_raises(tmp_path, field, value, built):
    model = TinySeg(QuantSpec("BBBBMMMMBBBB"))
    cb = MBUCallback(QuantSpec(**{"config": "BBBBMMMMBBBB", field: value}))
    with pytest.raises(ValueError, match=rf"QuantSpec\.{field} is {value} .* with {field} {built}"):
        trainer(tmp_path, 1, cb).fit(model, loader())
