"""SegmentationModule: an MBUNet with its loss (BCE + soft Dice), metrics and optimizers.

Optimizer defaults follow the paper's App. A.3 (Table A.1): RMSprop for full precision,
Adam for quantized nets, learning rate 1e-5, weight decay 1e-8, momentum 0.9, gradient
clipping 1.0 (by norm). The choice is made when the optimizer is built, so a net that
MBUCallback quantizes in ``setup`` gets Adam too.

Distillation (``teacher=``): a trained full-precision net, given as a checkpoint path or an
MBUNet, is frozen and kept out of ``parameters()``, ``state_dict()`` and the checkpoint (which
records neither it nor its path: ``eval``, ``export`` and ``load_from_checkpoint`` read the
student alone). The student starts from its weights (``init_from_teacher``) and its training
loss adds ``kd_weight`` x the soft-target BCE of the logits (``distill.distillation_loss``) and,
with ``feature_kd_weight``, of every activation's input.

Metrics, logged per epoch as ``val/...`` and ``test/...``:
- ``dice``: Dice of each image, averaged over images (torchmetrics ``DiceScore``);
- ``iou``: Jaccard index over all pixels of the epoch;
- ``f1``: F1 over all pixels of the epoch (the pooled Dice).
"""

from __future__ import annotations

import math
import os
from functools import partial

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex
from torchmetrics.segmentation import DiceScore

from .config import QuantSpec
from .distill import FeatureTaps, distillation_loss, feature_distillation_loss, load_fp_weights, load_teacher
from .model import MBUNet

OPTIMIZERS = ("adam", "rmsprop")
#: learning-rate schedules per optimizer step: none, or a linear warm-up over the first 3% then a cosine decay to 0
LR_SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.03


def _warmup_cosine(total_steps: int, step: int) -> float:
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits), per image and channel, averaged."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    dice = (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)
    return 1 - dice.mean()


def segmentation_metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {"dice": DiceScore(num_classes=1, input_format="one-hot"), "iou": BinaryJaccardIndex(), "f1": BinaryF1Score()},
        prefix=prefix,
    )


class SegmentationModule(pl.LightningModule):
    """Binary segmentation with an MBUNet.

    Args:
        quant: a ``QuantSpec``, or a layer config alone (e.g. "BBBBMMMMBBBB"); None for full precision
            (MBUCallback may quantize it in ``setup``). Saved in the hyper-parameters as a plain dict.
        base, in_channels, num_classes: passed to ``MBUNet``.
        optimizer: "adam", "rmsprop", or None (RMSprop for full precision, Adam for quantized).
        lr: learning rate (1e-5, the paper's, when None).
        weight_decay, momentum: optimizer settings (momentum is RMSprop's; Adam ignores it).
        grad_clip: gradient-norm clipping used unless the Trainer sets ``gradient_clip_val``; 0 disables.
        dice_weight: weight of the soft-Dice term added to BCE.
        lr_schedule: "constant" (the paper's) or "cosine" (3% linear warm-up, cosine decay over the fit's steps).
        teacher: a full-precision SegmentationModule checkpoint path or MBUNet to distil from (None: no teacher).
        kd_weight, kd_temperature: weight and temperature of the logit distillation term.
        feature_kd_weight: weight of the pre-activation distillation term (0: off).
        init_from_teacher: start the student from the teacher's weights (same width needed).
    """

    def __init__(
        self,
        quant: QuantSpec | str | dict | None = None,
        base: int = 64,
        in_channels: int = 3,
        num_classes: int = 1,
        optimizer: str | None = None,
        lr: float | None = None,
        weight_decay: float = 1e-8,
        momentum: float = 0.9,
        grad_clip: float = 1.0,
        dice_weight: float = 1.0,
        lr_schedule: str = "constant",
        teacher: str | os.PathLike | MBUNet | None = None,
        kd_weight: float = 1.0,
        kd_temperature: float = 1.0,
        feature_kd_weight: float = 0.0,
        init_from_teacher: bool = True,
    ):
        super().__init__()
        if optimizer is not None and optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)} or None (auto)")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if kd_weight < 0 or feature_kd_weight < 0 or kd_temperature <= 0:
            raise ValueError(f"need kd_weight >= 0, feature_kd_weight >= 0 and kd_temperature > 0, got "
                             f"{kd_weight}, {feature_kd_weight}, {kd_temperature}")
        self.net = MBUNet(quant, in_channels=in_channels, num_classes=num_classes, base=base)
        # the teacher is an input of training, not part of the model: a loaded checkpoint needs no teacher file
        self.save_hyperparameters(ignore=["quant", "teacher", "init_from_teacher"])
        self.hparams["quant"] = self.net.quant.as_dict()  # plain values: checkpoints load with weights_only
        self._teacher: tuple[MBUNet, ...] = ()  # a tuple keeps it out of parameters(), state_dict(), checkpoints
        self._taps: tuple[FeatureTaps, FeatureTaps] | None = None
        if teacher is not None:
            if isinstance(teacher, MBUNet):
                if teacher.is_quantized:
                    raise ValueError("the teacher must be a full-precision MBUNet")
                net = teacher.eval().requires_grad_(False)
                if init_from_teacher:
                    self.net.load_state_dict(net.state_dict(), strict=False)
            else:
                net = load_teacher(teacher)
                if init_from_teacher:
                    load_fp_weights(self.net, teacher)
            if feature_kd_weight > 0:
                for _, act in net.activations():
                    act.inplace = False  # an in-place ReLU would overwrite the pre-activation its tap keeps
            self._teacher = (net,)
        self.val_metrics = segmentation_metrics("val/")
        self.test_metrics = segmentation_metrics("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce + self.hparams.dice_weight * soft_dice_loss(logits, target)

    @property
    def teacher(self) -> MBUNet | None:
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.teacher is None:
            return
        self.teacher.to(self.device)
        # after the callbacks' setup: the taps must hold the activations of the net as quantized
        if self.hparams.feature_kd_weight > 0 and self._taps is None:
            self._taps = (FeatureTaps(self.net), FeatureTaps(self.teacher))

    def on_fit_end(self) -> None:
        if self._taps is not None:
            for taps in self._taps:
                taps.remove()
            self._taps = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        logs = {}
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(x)
            kd = distillation_loss(logits.float(), target.float(), self.hparams.kd_temperature)
            loss = loss + self.hparams.kd_weight * kd
            logs["train/kd"] = kd
            if self._taps is not None:
                feature_kd = feature_distillation_loss(self._taps[0].features, self._taps[1].features)
                loss = loss + self.hparams.feature_kd_weight * feature_kd
                logs["train/feature_kd"] = feature_kd
        logs["train/loss"] = loss
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def _evaluate(self, batch, stage: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        target = y.long()
        metrics["dice"].update((logits > 0).long(), target)
        metrics["iou"].update(logits.sigmoid(), target)
        metrics["f1"].update(logits.sigmoid(), target)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(x), sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.sigmoid(self(x))

    def configure_optimizers(self):
        hp = self.hparams
        name = hp.optimizer or ("adam" if self.net.is_quantized else "rmsprop")
        lr = 1e-5 if hp.lr is None else hp.lr
        if name == "rmsprop":
            optimizer = torch.optim.RMSprop(self.parameters(), lr=lr, weight_decay=hp.weight_decay,
                                            momentum=hp.momentum)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=hp.weight_decay)
        if hp.get("lr_schedule", "constant") == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if not 0 < total < 2**62:
            raise ValueError("lr_schedule='cosine' needs a finite number of steps: set max_epochs or max_steps")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_warmup_cosine, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # the paper clips at 1.0; a Trainer-level gradient_clip_val takes precedence
        if gradient_clip_val is None:
            gradient_clip_val = self.hparams.grad_clip
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
