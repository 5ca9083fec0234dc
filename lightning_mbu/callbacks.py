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

from .config import LayerConfig, QuantSpec
from .model import MBUNet
from .quant import SIGN_GRADIENTS, set_sign_gradient_


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
    """Quantize the module's MBUNet to a ``QuantSpec`` and schedule its masking factor ``t``.

    Args:
        quant: a ``QuantSpec`` or a layer config alone; None schedules the spec the module's net was
            built with (it must be quantized). When the net is already quantized, a ``quant`` whose
            config, stem or statistic differs from the net's raises instead of being ignored.
        mask_schedule: "constant", "linear", "cosine", or a callable ``epoch -> t``.
        warmup_epochs: epochs of the linear/cosine ramp from t=0 (binary-like) to the spec's ``t``.
        log_weight_stats: log the -1/0/+1 fraction of each masked layer every epoch.
        sign_gradient: backward of the binary activations, "ste" (hard-tanh) or "approx" (ApproxSign,
            2 - 2|x|); the forward, and so the exported net, is the same.
    """

    def __init__(
        self,
        quant: QuantSpec | str | LayerConfig | dict | None = None,
        mask_schedule: str | Callable[[int], float] = "constant",
        warmup_epochs: int = 0,
        log_weight_stats: bool = True,
        sign_gradient: str = "ste",
    ):
        if sign_gradient not in SIGN_GRADIENTS:
            raise ValueError(f"unknown sign_gradient {sign_gradient!r}; valid: {', '.join(SIGN_GRADIENTS)}")
        self.sign_gradient = sign_gradient
        if not callable(mask_schedule) and mask_schedule not in MASK_SCHEDULES:
            raise ValueError(
                f"unknown mask_schedule {mask_schedule!r}; valid: {', '.join(MASK_SCHEDULES)} or a callable"
            )
        self.quant = None if quant is None else QuantSpec.coerce(quant)
        if self.quant is not None and not self.quant.is_quantized:
            raise ValueError("MBUCallback: the QuantSpec has no layer config (full precision); give one, or "
                             "quant=None to schedule the module's own quantized net")
        self.mask_schedule, self.warmup_epochs = mask_schedule, warmup_epochs
        self.log_weight_stats = log_weight_stats
        self._schedule = self._make_schedule() if self.quant is not None else None
        #: the masking factor now applied (None until the spec is known)
        self.t: float | None = float(self._schedule(0)) if self._schedule else None

    def _make_schedule(self) -> Callable[[int], float]:
        if callable(self.mask_schedule):
            return self.mask_schedule
        return MASK_SCHEDULES[self.mask_schedule](self.quant.t, self.warmup_epochs)

    def _resolve(self, net: MBUNet) -> QuantSpec:
        """The spec to train: this callback's, checked against a net already quantized, or the net's own."""
        if self.quant is None:
            if not net.is_quantized:
                raise ValueError("MBUCallback(quant=None) schedules the module's own quantized net, but its "
                                 "MBUNet is full precision; give MBUCallback a QuantSpec or build the net quantized")
            return net.quant
        if net.is_quantized:
            for field in ("config", "stem", "statistic"):
                mine, built = getattr(self.quant, field), getattr(net.quant, field)
                if mine != built:
                    raise ValueError(f"MBUCallback's QuantSpec.{field} is {mine} but the module's net was built "
                                     f"quantized with {field} {built}; pass the same spec (or quant=None)")
        return self.quant

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = find_mbunet(pl_module)
        self.quant = self._resolve(net)
        if self._schedule is None:
            self._schedule = self._make_schedule()
        if self.t is None:
            self.t = float(self._schedule(0))
        net.quantize_(self.quant)
        set_sign_gradient_(net, self.sign_gradient)
        self._apply_t(pl_module, self.t)
        # so that load_from_checkpoint rebuilds the quantized net this callback trained
        hparams = getattr(pl_module, "hparams", None)
        if hparams is not None and "quant" in hparams:
            hparams["quant"] = net.quant.as_dict()

    def _apply_t(self, pl_module: pl.LightningModule, t: float) -> None:
        self.t = float(t)
        for _, q in find_mbunet(pl_module).masked_quantizers():
            q.t.fill_(self.t)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_t(pl_module, self._schedule(trainer.current_epoch))
        # every rank holds the same t and weights: syncing (a mean of equal values) changes no value, and
        # keeps Lightning from warning that epoch-level values are not reduced under DDP
        pl_module.log("mbu/t", self.t, on_step=False, on_epoch=True, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.log_weight_stats:
            return
        stats = find_mbunet(pl_module).weight_state_fractions()
        pl_module.log_dict(
            {f"sparsity/{layer}/{state}": v for layer, s in stats.items() for state, v in s.items()},
            on_step=False, on_epoch=True, sync_dist=True,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"quant": None if self.quant is None else self.quant.as_dict(), "t": self.t}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("quant") or {"config": state_dict["config"]}  # older checkpoints: flat keys
        saved_config = LayerConfig.parse(saved["config"])
        if self.quant is not None and saved_config != self.quant.config:
            raise ValueError(
                f"checkpoint was trained with layer config {saved_config}, but this MBUCallback has {self.quant.config}"
            )
        self.t = float(state_dict.get("t", state_dict.get("current_t")))
