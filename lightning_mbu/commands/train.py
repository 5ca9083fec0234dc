"""`lightning-mbu train`: fit a SegmentationModule (MBUCallback for quantized configs), then test it.

A quantized config trains with the recipe that closes most of the gap to full precision: the
student starts from a trained full-precision net and distils from it (``SegmentationModule(teacher=)``),
with ApproxSign gradients and a linear warm-up of the masking factor. The teacher is ``--teacher``,
or, when none is given, a full-precision net this command trains first (its own run, logged under
``lightning_logs/fp``). ``--from-scratch`` trains from random weights without a teacher.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..callbacks import MASK_SCHEDULES
from ..config import DEFAULT_T, STATISTICS, QuantSpec, parse_config
from ..module import LR_SCHEDULES
from ..quant import SIGN_GRADIENTS
from ..files import check_output, write_json
from .lightning_args import (SAMPLE_DEFAULTS, add_data_args, add_force_arg, add_trainer_args, build_trainer,
                             check_accelerator, data_kwargs, metrics_table, natural_float, natural_int, positive_float,
                             positive_int, stage_metrics, tested_images)

DEFAULT_CONFIG = "BBBBMMMMBBBB"  # the transposed convs masked: cheap to mask, a large gain (paper §4)
PAPER_EPOCHS = 30
#: the recipe's defaults for a quantized net with a teacher (from scratch: the callback's, ste and no warm-up)
RECIPE_DEFAULTS = {"sign_gradient": "approx", "mask_schedule": "linear", "warmup_epochs": 3}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a (masked-)binary U-Net and test it",
        description="Train a SegmentationModule with Lightning and test its best checkpoint. Without --data it "
                    "trains on the built-in sample with small settings "
                    f"({', '.join(f'{k}={v}' for k, v in SAMPLE_DEFAULTS.items())}); flags override them.",
    )
    g = p.add_argument_group("model (SegmentationModule, MBUCallback)")
    g.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"12 layer modes (B/M/2/4/8/F, e.g. {DEFAULT_CONFIG}) or name=mode,...; 'fp' for a "
                        "full-precision net")
    g.add_argument("--base", type=positive_int, default=None, help="width of the first level (default 64, the paper's)")
    g.add_argument("--stem-mode", default=QuantSpec.stem, help="mode of the second input conv (default masked)")
    g.add_argument("--statistic", choices=STATISTICS, default=QuantSpec.statistic,
                   help="masking threshold statistic")
    g.add_argument("--mask-schedule", choices=tuple(MASK_SCHEDULES), default=None,
                   help="how the masking factor t reaches --target-t (default: linear with a teacher, else constant)")
    g.add_argument("--target-t", type=natural_float, default=DEFAULT_T, help="masking factor t after the warm-up")
    g.add_argument("--warmup-epochs", type=natural_int, default=None,
                   help="epochs of the linear/cosine ramp of t (default: 3, at most a quarter of --max-epochs, with a "
                        "teacher; else 0)")
    g.add_argument("--sign-gradient", choices=tuple(SIGN_GRADIENTS), default=None,
                   help="backward of the binary activations: hard-tanh STE or ApproxSign (default: approx with a "
                        "teacher, else ste); the trained net computes the same either way")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="constant (the paper's) or cosine (3%% warm-up, cosine decay to 0 over the run)")
    r = p.add_argument_group("full-precision teacher (quantized configs)")
    r.add_argument("--teacher", type=Path, default=None, metavar="CKPT",
                   help="a trained full-precision checkpoint to start from and distil from (default: train one "
                        "first in this command)")
    r.add_argument("--teacher-epochs", type=positive_int, default=None,
                   help="epochs of the teacher trained when no --teacher is given (default: --max-epochs; half of "
                        "it on the built-in sample)")
    r.add_argument("--kd-weight", type=natural_float, default=1.0, help="weight of the logit distillation term")
    r.add_argument("--kd-temperature", type=positive_float, default=1.0, help="temperature of the soft targets")
    r.add_argument("--feature-kd-weight", type=natural_float, default=0.0,
                   help="weight of the pre-activation distillation term (default 0: off; it costs ~40%% of the "
                        "steps in a fixed time)")
    how = r.add_mutually_exclusive_group()
    how.add_argument("--from-scratch", action="store_true",
                     help="no teacher: random initial weights, no distillation (the paper's procedure)")
    how.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                     help="start from a trained full-precision checkpoint's weights without distilling from it (default: "
                          "the teacher's weights, or random ones with --from-scratch)")
    g.add_argument("--optimizer", choices=("adam", "rmsprop"), default=None,
                   help="default: RMSprop for full precision, Adam for quantized (paper App. A.3)")
    g.add_argument("--lr", type=positive_float, default=None, help="default 1e-5 (the paper's)")
    g.add_argument("--weight-decay", type=natural_float, default=1e-8, help="optimizer weight decay")
    g.add_argument("--momentum", type=natural_float, default=0.9, help="RMSprop momentum")
    g.add_argument("--gradient-clip", type=natural_float, default=1.0, help="gradient-norm clipping (0: off)")
    g.add_argument("--dice-weight", type=natural_float, default=1.0, help="weight of soft Dice in the loss")
    add_data_args(p)
    add_trainer_args(p, fit=True)
    p.add_argument("--output", type=Path, default=None,
                   help="results JSON (default: results.json in the run's log folder)")
    add_force_arg(p)
    p.set_defaults(func=run)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags: the sample's small settings without --data, else the paper's; the recipe's with a teacher."""
    if args.teacher is not None and (args.from_scratch or args.init_from is not None):
        raise ValueError("--teacher cannot be combined with --from-scratch or --init-from")
    source = args.teacher or args.init_from
    if source is not None and args.base is None:
        from ..distill import read_fp_checkpoint

        args.base = read_fp_checkpoint(source).hparams.get("base")  # the width must match the source
    on_sample = args.data_root is None
    defaults = SAMPLE_DEFAULTS if on_sample else {"base": 64, "max_epochs": PAPER_EPOCHS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, [value] if key == "size" else value)
    if args.teacher_epochs is None:  # the sample's full-precision net learns in half the epochs
        args.teacher_epochs = max(1, args.max_epochs // 2) if on_sample else args.max_epochs
    recipe = not args.from_scratch and args.init_from is None
    defaults = dict(RECIPE_DEFAULTS) if recipe else {"sign_gradient": "ste", "mask_schedule": "constant",
                                                     "warmup_epochs": 0}
    if recipe and args.max_epochs > 0:  # a short run still spends most of its epochs at the final t
        defaults["warmup_epochs"] = min(defaults["warmup_epochs"], args.max_epochs // 4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def needs_teacher(args: argparse.Namespace) -> bool:
    """A quantized config trained by the recipe: it distils from --teacher or from a teacher trained first."""
    return parse_config(args.config) is not None and not args.from_scratch and args.init_from is None


def quant_spec(args: argparse.Namespace) -> QuantSpec:
    return QuantSpec(parse_config(args.config), stem=args.stem_mode, statistic=args.statistic, t=args.target_t)


def build_module(args: argparse.Namespace, teacher: Path | None = None):
    from ..distill import load_fp_weights
    from ..module import SegmentationModule

    module = SegmentationModule(
        quant_spec(args), base=args.base, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, grad_clip=args.gradient_clip, dice_weight=args.dice_weight,
        lr_schedule=args.lr_schedule, teacher=teacher, kd_weight=args.kd_weight, kd_temperature=args.kd_temperature,
        feature_kd_weight=args.feature_kd_weight,
    )
    if args.init_from is not None:
        load_fp_weights(module.net, args.init_from)
    return module


def read_resumed(args: argparse.Namespace) -> dict | None:
    """The --ckpt-path checkpoint as saved, checked to be one of ours before anything is built or trained."""
    from ..checkpoint import load_checkpoint

    if args.ckpt_path is None:
        return None
    import torch

    load_checkpoint(args.ckpt_path)  # a clear error for any file that is not ours
    return torch.load(args.ckpt_path, map_location="cpu", weights_only=True)


def resumed_run(args: argparse.Namespace, saved: dict | None, module):
    """The run folder a resumed checkpoint continues (None: a new run); its model must be the flags' model."""
    if saved is None:
        return None
    from lightning.pytorch.utilities import rank_zero_warn

    from .resume import run_folder

    ours, theirs = module.state_dict(), saved["state_dict"]
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        hp = saved["hyper_parameters"]
        config = (hp.get("quant") or {}).get("config", hp.get("config"))
        raise ValueError(f"--ckpt-path {args.ckpt_path} holds config {config or 'fp'}, base {hp.get('base')}, "
                         f"but the flags give config {module.net.config or 'fp'}, base {module.net.base}; resume with "
                         "the model flags it was trained with")
    run = run_folder(args.ckpt_path, int(saved.get("global_step", 0)))
    if run is None:
        rank_zero_warn(f"--ckpt-path {args.ckpt_path} is not in a run's checkpoints folder: resuming into a new run")
    return run


def check_memory(args: argparse.Namespace, module, datamodule, trainer) -> None:
    """Refuse a size, batch or width whose training activations cannot fit the device, before training starts."""
    from ..memory import activation_bytes, free_bytes

    device = trainer.strategy.root_device
    if device.type == "cuda" and any(w in str(args.strategy) for w in ("fork", "notebook")):
        return  # reading GPU memory initialises CUDA, which forked workers cannot inherit
    free = free_bytes(device)
    size = datamodule.size or datamodule.native_size
    if free is None or size is None:
        return
    need = activation_bytes(module.net, size, datamodule.batch_size)
    if "16" in str(trainer.precision):  # half-precision activations: the bound halves
        need //= 2
    if need > free:
        raise ValueError(
            f"--size {size[0]} {size[1]} with --batch-size {datamodule.batch_size} and --base {module.net.base} needs "
            f"at least {need / 2**30:,.1f} GiB for one training step's activations, but {device} has "
            f"{free / 2**30:,.1f} GiB free; lower --size, --batch-size or --base")


def run(args: argparse.Namespace) -> int:
    resolve_defaults(args)
    check_accelerator(args)
    if args.output:  # refused now, not after hours of training
        check_output(args.output, inputs=[args.ckpt_path, args.init_from, args.teacher], force=args.force)
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    teacher, teacher_results = args.teacher, None
    if needs_teacher(args) and teacher is None:
        if args.ckpt_path is not None:
            read_resumed(args)  # a file that is no checkpoint of ours is named first
            raise ValueError(f"--ckpt-path {args.ckpt_path}: a quantized run resumes with the --teacher it was "
                             "trained with (the resume line printed at Ctrl-C names it)")
        teacher_results = train_teacher(args, argv)
        teacher = Path(teacher_results["teacher_checkpoint"])
        argv += ["--teacher", str(teacher)]  # a resumed run distils from the same teacher
    extra = {}
    if needs_teacher(args):
        extra["teacher"] = {"checkpoint": str(teacher), "trained_here": teacher_results is not None}
        if teacher_results:
            extra["teacher"].update({k: teacher_results.get(k) for k in ("fit_seconds", "epochs", "test")})
    fit_and_test(args, argv, teacher if needs_teacher(args) else None, args.output, extra)
    return 0


def train_teacher(args: argparse.Namespace, argv: list[str]) -> dict:
    """Train the full-precision teacher (its own run under lightning_logs/fp) and return its results."""
    fp = argparse.Namespace(**{**vars(args), "config": "fp", "max_epochs": args.teacher_epochs, "output": None,
                               "mask_schedule": "constant", "warmup_epochs": 0, "feature_kd_weight": 0.0})
    print(f"no --teacher given: training the full-precision teacher first ({args.teacher_epochs} epochs, "
          f"base {args.base}); then {args.config} starts from it and distils from it", flush=True)
    results = fit_and_test(fp, argv + ["--config", "fp", "--max-epochs", str(args.teacher_epochs)], None, None)
    results["teacher_checkpoint"] = results["best_checkpoint"] or results["last_checkpoint"]
    print(f"teacher: {results['teacher_checkpoint']}", flush=True)
    return results


def fit_and_test(args: argparse.Namespace, argv: list[str], teacher: Path | None, output: Path | None,
                 extra: dict | None = None) -> dict:
    """Fit one model, test its best checkpoint, write results.json (rank 0) and return the results."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ..callbacks import MBUCallback
    from ..data import SegmentationDataModule
    from .resume import Resumable

    saved = read_resumed(args)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = SegmentationDataModule(**data_kwargs(args))
    module = build_module(args, teacher)
    run_dir = resumed_run(args, saved, module)
    datamodule.setup()  # every sample checked, and native sizes known, before the memory check and training
    validates = args.limit_val_batches != 0 and datamodule.val_fraction > 0
    # Lightning's save_last only copies the last *top-k* save, so the last epoch gets its own callback; it runs
    # after the best one, so last.ckpt holds that epoch's best score and a resumed run carries it on
    last = ModelCheckpoint(filename="last", enable_version_counter=False)
    best = None
    if validates:
        best = ModelCheckpoint(monitor="val/dice", mode="max", filename="best-epoch{epoch}-dice{val/dice:.4f}",
                               auto_insert_metric_name=False)
    callbacks = [best, last] if best else [last]
    if module.net.is_quantized:
        callbacks.append(MBUCallback(mask_schedule=args.mask_schedule, warmup_epochs=args.warmup_epochs,
                                     sign_gradient=args.sign_gradient))
    callbacks.append(Resumable(argv, last))
    overrides = {"default_root_dir": run_dir.path} if run_dir and args.logger == "none" else {}
    trainer = build_trainer(args, name=str(module.net.config or "fp"), callbacks=callbacks, run=run_dir, **overrides)
    check_memory(args, module, datamodule, trainer)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=args.ckpt_path)
    fit_seconds = time.perf_counter() - start
    best_path = (best.best_model_path if best else "") or None
    results = {
        "config": str(module.net.config or "fp"),
        "base": module.hparams.base,
        "data": {**datamodule.hparams, "layout": datamodule.layout.name, "size": datamodule.size},
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "best_checkpoint": best_path,
        "best_val_dice": float(best.best_model_score) if best_path else None,
        "last_checkpoint": last.best_model_path or None,
    }
    if module.net.is_quantized:
        results["recipe"] = {"teacher": None if teacher is None else str(teacher),
                             "init": "teacher" if teacher is not None else (
                                 str(args.init_from) if args.init_from else "random"),
                             "kd_weight": args.kd_weight if teacher is not None else 0.0,
                             "feature_kd_weight": args.feature_kd_weight if teacher is not None else 0.0,
                             "sign_gradient": args.sign_gradient, "mask_schedule": args.mask_schedule,
                             "warmup_epochs": args.warmup_epochs}
    rows = []
    if datamodule.test_fraction > 0 and args.limit_test_batches != 0:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        results["test"] = stage_metrics(tested[0], "test")
        results["test"]["images"] = tested_images(trainer, trainer.test_dataloaders)
        rows.append({"split": "test", **results["test"]})

    results.update(extra or {})
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every rank must ask
    if not trainer.is_global_zero:
        return results  # every rank needs the teacher's checkpoint path; rank 0 alone writes and prints
    out = output or log_dir / "results.json"
    write_json(out, results)
    print(f"best checkpoint: {best_path}\nlast checkpoint: {results['last_checkpoint']}")
    if rows:
        print(metrics_table(rows))
    print(f"results: {out}", flush=True)
    return results
