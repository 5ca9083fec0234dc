"""SegmentationModule: an MBUNet with its loss (BCE + soft Dice), metrics and optimizers.

Optimizer defaults follow the paper's App. A.3 (Table A.1): RMSprop for full precision,
Adam for quantized nets, learning rate 1e-5, weight decay 1e-8, momentum 0.9, gradient
clipping 1.0 (by norm). The choice is made when the optimizer is built, so a net that
MBUCallback quantizes in ``setup`` gets Adam too.

Metrics, logged per epoch as ``val/...`` and ``test/...``:
- ``dice``: Dice of each image, averaged over images (torchmetrics ``DiceScore``);
- ``iou``: Jaccard index over all pixels of the epoch;
- ``f1``: F1 over all pixels of the epoch (the pooled Dice).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex
from torchmetrics.segmentation import DiceScore

from .config import QuantSpec
from .model import MBUNet

OPTIMIZERS = ("adam", "rmsprop")


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
    ):
        super().__init__()
        if optimizer is not None and optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)} or None (auto)")
        self.net = MBUNet(quant, in_channels=in_channels, num_classes=num_classes, base=base)
        self.save_hyperparameters(ignore=["quant"])
        self.hparams["quant"] = self.net.quant.as_dict()  # plain values: checkpoints load with weights_only
        self.val_metrics = segmentation_metrics("val/")
        self.test_metrics = segmentation_metrics("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce + self.hparams.dice_weight * soft_dice_loss(logits, target)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
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
            return torch.optim.RMSprop(self.parameters(), lr=lr, weight_decay=hp.weight_decay, momentum=hp.momentum)
        return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=hp.weight_decay)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # the paper clips at 1.0; a Trainer-level gradient_clip_val takes precedence
        if gradient_clip_val is None:
            gradient_clip_val = self.hparams.grad_clip
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
