"""The quantized-training recipe's methods: same forward (export stays bit-exact), the gradients and losses they promise."""

import lightning.pytorch as pl
import pytest
import torch

from lightning_mbu.callbacks import MBUCallback
from lightning_mbu.checkpoint import load_checkpoint, load_module
from lightning_mbu.distill import FeatureTaps, feature_distillation_loss
from lightning_mbu.export import fold
from lightning_mbu.model import MBUNet
from lightning_mbu.module import SegmentationModule, _warmup_cosine
from lightning_mbu.quant import ApproxSign, SignActivation, set_sign_gradient_
from random_nets import randomize


def test_approx_sign_is_sign_forward_and_a_triangle_backward():
    x = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 2.0], requires_grad=True)
    y = ApproxSign()(x)
    assert torch.equal(y, SignActivation()(x.detach()))
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 0.0, 0.5, 1.5, 2.0, 1.5, 0.5, 0.0, 0.0]))


def test_set_sign_gradient_swaps_every_binary_activation_and_the_net_still_folds():
    net = randomize(MBUNet("BMBMMBBMBMBM", base=4), seed=5)
    x = torch.randn(2, 3, 37, 42)
    with torch.no_grad():
        before = net(x)
    set_sign_gradient_(net, "approx")
    acts = [a for _, a in net.activations()]
    assert acts and all(type(a) is ApproxSign for a in acts)
    with torch.no_grad():
        assert torch.equal(net(x), before)
    assert torch.allclose(fold(net.eval())(x), before, atol=1e-5)
    set_sign_gradient_(net, "ste")
    assert all(type(a) is SignActivation for _, a in net.activations())
    with pytest.raises(ValueError, match="sign gradient 'tanh'"):
        set_sign_gradient_(net, "tanh")


def test_feature_taps_keep_every_pre_activation_and_the_loss_reaches_the_student():
    torch.manual_seed(2)
    teacher, student = MBUNet(None, base=4).eval(), MBUNet("BBBBMMMMBBBB", base=4)
    for _, act in teacher.activations():
        act.inplace = False
    taps_t, taps_s = FeatureTaps(teacher), FeatureTaps(student)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        teacher(x)
    student(x)
    assert set(taps_t.features) == set(taps_s.features) == {n for n, _ in student.activations()}
    assert (taps_t.features["up4.conv2.act"] < 0).any()  # pre-ReLU values, not overwritten in place
    feature_distillation_loss(taps_s.features, taps_t.features).backward()
    assert student.inc.conv1.conv.weight.grad.abs().sum() > 0
    taps_s.remove()
    student(x)
    assert not taps_s.features


@pytest.fixture
def fp_ckpt(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(None, base=4)
    path = tmp_path / "fp.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def _fit(module, callbacks, tmp_path=None, **trainer_kwargs):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.5).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


@pytest.mark.parametrize("sign_gradient", ["ste", "approx"])
def test_teacher_module_starts_from_the_teacher_and_distils_logits_and_features(fp_ckpt, sign_gradient, tmp_path):
    module = SegmentationModule("BBBBMMMMBBBB", base=4, lr=1e-2, teacher=fp_ckpt, feature_kd_weight=0.5)
    fp = torch.load(fp_ckpt, weights_only=True)["state_dict"]
    assert torch.equal(module.net.inc.conv1.conv.weight, fp["net.inc.conv1.conv.weight"])  # initialised from it
    # the teacher is no parameter, no state and no hyper-parameter of the student
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in module.net.parameters())
    assert all(k.startswith(("net.", "val_metrics", "test_metrics")) for k in module.state_dict())
    assert "teacher" not in module.hparams
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = _fit(module, [MBUCallback(mask_schedule="linear", warmup_epochs=2, sign_gradient=sign_gradient)],
                   max_epochs=2)
    metrics = trainer.callback_metrics
    assert metrics["train/kd"] > 0 and metrics["train/feature_kd"] > 0
    assert metrics["train/loss_epoch"] > metrics["train/kd_epoch"]  # the task loss plus the distillation terms
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # frozen
    assert not module.teacher.training
    acts = [a for _, a in module.net.activations()]
    assert all(isinstance(a, SignActivation) for a in acts)
    assert all(type(a) is ApproxSign for a in acts) == (sign_gradient == "approx")
    assert module._taps is None  # removed at the end of fitting

    # the saved student loads, folds and runs without the teacher file
    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    fp_ckpt.unlink()
    loaded = load_module(load_checkpoint(ckpt))
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        expected = module.net.eval()(x)
        assert torch.equal(loaded.net(x), expected)
    assert torch.allclose(fold(loaded.net)(x), expected, atol=1e-5)


def test_a_distilled_student_differs_from_one_without_the_term(fp_ckpt):
    trained = []
    for kd_weight in (0.0, 5.0):
        torch.manual_seed(0)
        module = SegmentationModule("BBBBMMMMBBBB", base=4, lr=1e-2, teacher=fp_ckpt, kd_weight=kd_weight)
        _fit(module, [MBUCallback()], max_steps=3)
        trained.append(module.net.inc.conv1.conv.weight.detach().clone())
    assert not torch.equal(*trained)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [_warmup_cosine(100, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 3) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.01
    module = SegmentationModule("BBBBMMMMBBBB", base=4, lr=1e-2, lr_schedule="cosine")
    trainer = _fit(module, [MBUCallback()], max_epochs=2)
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-2 * 0.6  # decayed over the 4 steps
    with pytest.raises(ValueError, match="lr_schedule"):
        SegmentationModule(None, lr_schedule="step")


def test_a_quantized_teacher_is_refused(tmp_path):
    module = SegmentationModule("BBBBMMMMBBBB", base=4)
    path = tmp_path / "q.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    with pytest.raises(ValueError, match="full precision"):
        SegmentationModule("BBBBMMMMBBBB", base=4, teacher=path)
