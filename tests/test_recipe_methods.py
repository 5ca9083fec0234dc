"""The recipe's training-side methods: same forward (so export stays bit-exact), the gradients they promise."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_mbu import MBUNet
from lightning_mbu.callbacks import MBUCallback
from lightning_mbu.export import fold
from lightning_mbu.module import SegmentationModule
from lightning_mbu.quant import SignActivation
from random_nets import randomize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from recipe_methods import (ApproxSign, FeatureTaps, RecipeModule, ShiftedSign,  # noqa: E402
                            feature_distillation_loss, merge_shifts_, replace_signs_)


def test_approx_sign_is_sign_forward_and_a_triangle_backward():
    x = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 2.0], requires_grad=True)
    y = ApproxSign()(x)
    assert torch.equal(y, SignActivation()(x.detach()))
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 0.0, 0.5, 1.5, 2.0, 1.5, 0.5, 0.0, 0.0]))


def test_learnable_thresholds_fold_bit_exactly_after_merging_into_batchnorm():
    torch.manual_seed(0)
    net = randomize(MBUNet("BMBMMBBMBMBM", base=4), seed=5)
    replace_signs_(net, lambda bn: ShiftedSign(bn.num_features))
    with torch.no_grad():
        for _, act in net.activations():
            act.shift.normal_(0, 1.5)
    x = torch.randn(2, 3, 37, 42)
    with torch.no_grad():
        logits = net(x)
        merge_shifts_(net)
        assert all(float(a.shift.abs().max()) == 0 for _, a in net.activations())
        assert torch.equal(net(x), logits)  # merging changes no decision
    assert torch.allclose(fold(net)(x), logits, atol=1e-5)


def test_a_threshold_after_batchnorm_gets_the_batchnorm_bias_gradient_negated():
    torch.manual_seed(1)
    net = MBUNet("BBBBMMMMBBBB", base=4)
    replace_signs_(net, lambda bn: ShiftedSign(bn.num_features))
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for name, act in net.activations():
        bias = net.get_submodule(name.rsplit(".", 1)[0]).bn.bias
        assert act.shift.grad.shape == bias.shape
        assert torch.allclose(act.shift.grad, -bias.grad, atol=1e-6), name


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
    loss = feature_distillation_loss(taps_s.features, taps_t.features)
    loss.backward()
    assert student.inc.conv1.conv.weight.grad.abs().sum() > 0
    taps_s.remove()
    taps_s.features.clear()
    student(x)
    assert not taps_s.features


@pytest.fixture
def fp_ckpt(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(None, base=4)
    path = tmp_path / "fp.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.mark.parametrize("sign_gradient", ["ste", "approx"])
def test_recipe_module_trains_from_the_teacher_with_feature_distillation(fp_ckpt, sign_gradient):
    module = RecipeModule(teacher=str(fp_ckpt), quant="BBBBMMMMBBBB", base=4, lr=1e-2, sign_gradient=sign_gradient)
    fp = torch.load(fp_ckpt, weights_only=True)["state_dict"]
    assert torch.equal(module.net.inc.conv1.conv.weight, fp["net.inc.conv1.conv.weight"])  # initialised from it
    x = torch.randn(4, 3, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.5).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[MBUCallback("BBBBMMMMBBBB", mask_schedule="linear", warmup_epochs=2)])
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.callback_metrics["train/feature_kd"] > 0
    acts = [a for _, a in module.net.activations()]
    assert all(isinstance(a, ApproxSign) for a in acts) == (sign_gradient == "approx")
    assert all(isinstance(a, SignActivation) for a in acts)
    assert module.hparams.sign_gradient == sign_gradient and module.hparams.feature_kd_weight == 1.0
    fold(module.net.eval())  # the trained net still folds
