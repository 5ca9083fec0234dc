"""MBUCallback: quantize a LightningModule's MBUNet and schedule its masking threshold.

Modelled on Lightning's ``ModelPruning``: it rewrites modules in ``setup`` (before the
optimizer is built and before a checkpoint is restored), moves the masking factor
``t`` on an epoch schedule, logs the -1/0/+1 fractions of every masked layer, and
keeps its state in checkpoints so ``fit(ckpt_path=...)`` resumes the schedule exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from .config import LayerConfig
from .model import MBUNet


# Schedules are partials of module-level functions, not closures, so that the callback
# pickles: ddp_spawn and spawned search workers send it to other processes.
def _constant_t(target: float, epoch: int) -> float:
    return target


def _linear_t(target: float, warmup_epochs: int, epoch: int) -> float:
    return target * min(1.0, epoch / warmup_epochs) if warmup_epochs > 0 else target


def _cosine_t(target: float, warmup_epochs: int, epoch: int) -> float:
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return target
    return target * 0.5 * (1 - math.cos(math.pi * epoch / warmup_epochs))


def constant_schedule(target: float, warmup_epochs: int = 0) -> Callable[[int], float]:
    return partial(_constant_t, target)


def linear_schedule(target: float, warmup_epochs: int) -> Callable[[int], float]:
    """0 at epoch 0, rising linearly to ``target`` at ``warmup_epochs``."""
    return partial(_linear_t, target, warmup_epochs)


def cosine_schedule(target: float, warmup_epochs: int) -> Callable[[int], float]:
    """Half-cosine ramp from 0 to ``target`` over ``warmup_epochs``."""
    return partial(_cosine_t, target, warmup_epochs)


MASK_SCHEDULES = {"constant": constant_schedule, "linear": linear_schedule, "cosine": cosine_schedule}


def find_mbunet(pl_module: torch.nn.Module) -> MBUNet:
    nets = [m for m in pl_module.modules() if isinstance(m, MBUNet)]
    if len(nets) != 1:
        raise ValueError(
            f"MBUCallback needs exactly one MBUNet inside {type(pl_module).__name__}, found {len(nets)}"
        )
    return nets[0]


class MBUCallback(Callback):
    """Quantize the module's MBUNet to ``config`` and schedule the masking factor.

    Args:
        config: the 12 layer modes (any form ``LayerConfig.parse`` takes).
        mask_schedule: "constant", "linear", "cosine", or a callable ``epoch -> t``.
        target_t: the masking factor reached after the warm-up.
        warmup_epochs: epochs of the linear/cosine ramp from t=0 (binary-like) to ``target_t``.
        statistic: per-channel statistic the threshold scales: "max" or "mean".
        stem_mode: mode of the second input conv (masked in the paper).
        log_weight_stats: log the -1/0/+1 fraction of each masked layer every epoch.
    """

    def __init__(
        self,
        config: str | LayerConfig | dict,
        mask_schedule: str | Callable[[int], float] = "constant",
        target_t: float = 0.5,
        warmup_epochs: int = 0,
        statistic: str = "max",
        stem_mode: str = "masked",
        log_weight_stats: bool = True,
    ):
        self.config = LayerConfig.parse(config)
        if callable(mask_schedule):
            self._schedule = mask_schedule
        elif mask_schedule in MASK_SCHEDULES:
            self._schedule = MASK_SCHEDULES[mask_schedule](target_t, warmup_epochs)
        else:
            raise ValueError(
                f"unknown mask_schedule {mask_schedule!r}; valid: {', '.join(MASK_SCHEDULES)} or a callable"
            )
        self.statistic = statistic
        self.stem_mode = stem_mode
        self.log_weight_stats = log_weight_stats
        self.current_t = float(self._schedule(0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = find_mbunet(pl_module)
        net.quantize_(self.config, stem_mode=self.stem_mode, masked_t=self.current_t,
                      masked_statistic=self.statistic)
        # so that load_from_checkpoint rebuilds the quantized net this callback trained
        hparams = getattr(pl_module, "hparams", None)
        if hparams is not None and "config" in hparams:
            hparams.update(config=str(self.config), stem_mode=self.stem_mode, masked_statistic=self.statistic)

    def _apply_t(self, pl_module: pl.LightningModule, t: float) -> None:
        self.current_t = float(t)
        for _, q in find_mbunet(pl_module).masked_quantizers():
            q.t.fill_(self.current_t)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_t(pl_module, self._schedule(trainer.current_epoch))
        # every rank holds the same t and weights: syncing (a mean of equal values) changes no value, and
        # keeps Lightning from warning that epoch-level values are not reduced under DDP
        pl_module.log("mbu/t", self.current_t, on_step=False, on_epoch=True, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.log_weight_stats:
            return
        stats = find_mbunet(pl_module).weight_state_fractions()
        pl_module.log_dict(
            {f"sparsity/{layer}/{state}": v for layer, s in stats.items() for state, v in s.items()},
            on_step=False, on_epoch=True, sync_dist=True,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"config": str(self.config), "current_t": self.current_t, "statistic": self.statistic,
                "stem_mode": self.stem_mode}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = LayerConfig.parse(state_dict["config"])
        if saved != self.config:
            raise ValueError(
                f"checkpoint was trained with layer config {saved}, but this MBUCallback has {self.config}"
            )
        self.current_t = float(state_dict["current_t"])
