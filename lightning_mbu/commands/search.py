"""`lightning-mbu cost` (per-layer cost table, Table A.4 / Fig. 4) and `lightning-mbu search` (the Optuna study)."""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from cutlass_kernels.table import DEFAULT_ENCODING, ENCODINGS

from ..config import LAYER_NAMES, PAPER_NAMES, parse_size
from ..search.cost import NORMALIZATIONS, CostModel


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cost", help="per-layer ops, params, cost score and masking rank (Table A.4)",
        description="Measure each of the 12 configurable layers of an MBU-Net at one input size: operations "
                    "(multiplications + additions) and parameters, their eq. 2 cost score (--w-op), and the rank "
                    "that orders the 13 cost-aware configs (mask the k cheapest layers). Nothing is trained.")
    p.add_argument("--size", nargs="+", default=["512x512"], metavar="SIZE", help="input HxW, H W or N (default 512x512)")
    p.add_argument("--base", type=int, default=64, help="U-Net base width (default 64)")
    p.add_argument("--w-op", type=float, default=0.5, help="weight of ops in eq. 2; w_param = 1 - w_op")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="max",
                   help="scale ops and params to [0,1] by their maximum (default) or min-max")
    p.add_argument("--encoding", choices=ENCODINGS, default=DEFAULT_ENCODING, help="bit encoding for config costs")
    p.add_argument("--plot", metavar="PNG", help="also draw Fig. 4 (ops and params per layer) here (default: no plot)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run_cost)

    s = subparsers.add_parser(
        "search", help="Optuna search over per-layer masking (Dice vs cost)",
        description="Search which layers to mask: an Optuna study with two objectives, validation Dice of a short "
                    "training (up) and the config's cost in binary operations (down). The 13 cost-aware configs "
                    "run first, then ShapleyCostSampler proposes configs from each layer's estimated Dice gain. "
                    "The study lives in --out (or --storage), so running the command again continues it; the "
                    "summary, Pareto front and plots are written there.")
    s.add_argument("--budget", type=int, default=50, help="finished (complete + pruned) trials to reach")
    s.add_argument("--data", default=None, help="dataset root (default: the built-in sample)")
    s.add_argument("--layout", default=None,
                   help="dataset layout: dsb2018, carvana, isic or folder (default: detected from the folder)")
    s.add_argument("--size", nargs="+", default=["64x64"], metavar="SIZE",
                   help="training size of the trials: HxW, H W or N (default 64x64)")
    s.add_argument("--out", default="mbu_search", help="output folder (default ./mbu_search)")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL (sqlite:///f.db, postgresql+psycopg2://user:pw@host/db, journal:f.log); "
                        "default sqlite file in --out")
    s.add_argument("--study-name", default="mbu-search", help="Optuna study name in the storage")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes on the storage, spread round-robin over the visible GPUs")
    s.add_argument("--workers-per-gpu", type=int, default=None, metavar="N",
                   help="N worker processes on every visible GPU, or N on the CPU without one (overrides --workers; "
                        "default: use --workers)")
    s.add_argument("--epochs-per-trial", type=int, default=4, help="training epochs of each trial")
    s.add_argument("--train-batches", type=float, default=5,
                   help="batches per training epoch (a fraction <= 1.0 means a share of the data)")
    s.add_argument("--val-batches", type=float, default=1.0, help="validation batches (fraction <= 1.0: share)")
    s.add_argument("--batch-size", type=int, default=4, help="trial batch size")
    s.add_argument("--base", type=int, default=None,
                   help="U-Net base width of the trained trials (default: the teacher's, else 8)")
    s.add_argument("--lr", type=float, default=None,
                   help="trial learning rate (default 3e-3 from random weights, 1e-3 from a teacher)")
    s.add_argument("--teacher", default=None, metavar="CKPT",
                   help="a trained full-precision checkpoint: each trial is a short fine-tune from its weights, "
                        "distilled from it (ApproxSign, as `train` does); default: trials from random weights")
    s.add_argument("--kd-weight", type=float, default=1.0, help="weight of the logit distillation term (--teacher)")
    s.add_argument("--warmup-epochs", type=int, default=0, help="epochs of a linear ramp of t in each trial")
    s.add_argument("--precision", default=None, help="trial precision, e.g. bf16-mixed (default 32-true)")
    s.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of each search worker")
    s.add_argument("--augment", action="store_true",
                   help="augment trial training data (off by default: all configs see the same batches)")
    s.add_argument("--accelerator", default="auto", help="Lightning accelerator of the trials")
    s.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per worker (default 1, fastest for the tiny trial nets)")
    s.add_argument("--layers", default="all", help="comma-separated layers to search (default all 12)")
    s.add_argument("--background", default="B" * len(LAYER_NAMES),
                   help="modes of the layers not searched (12-letter config)")
    s.add_argument("--kbit", action="store_true", help="also offer 2-bit weights per layer")
    s.add_argument("--grid", action="store_true", help="exhaustive grid over --layers (exact Shapley values)")
    s.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    s.add_argument("--cost-size", nargs="+", default=["512x512"], metavar="SIZE",
                   help="input size of the cost objective: HxW, H W or N (default 512x512)")
    s.add_argument("--cost-base", type=int, default=64, help="base width of the costed net (default 64)")
    s.add_argument("--encoding", choices=ENCODINGS, default=DEFAULT_ENCODING, help="bit encoding of the cost objective")
    s.add_argument("--w-op", type=float, default=0.5, help="eq. 2 weight for the cost-aware ranking")
    s.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats (RDB storages)")
    s.add_argument("--grace", type=int, default=30, help="seconds without heartbeat before a trial is stale")
    s.add_argument("--seed", type=int, default=0, help="sampler, weights and data order seed")
    s.set_defaults(func=run_search_command)


def _batches(x: float) -> int | float:
    return x if x <= 1.0 else int(x)


def run_cost(args: argparse.Namespace) -> int:
    if args.plot:
        from ..files import check_output

        check_output(args.plot, force=args.force)
    model = CostModel.measure(parse_size(args.size), base=args.base)
    rows = model.table(args.w_op, args.normalize)
    if args.json:
        print(json.dumps({"size": list(model.size), "base": model.base, "layers": rows,
                          "config_binary_ops": {str(c): model.config_binary_ops(c, args.encoding)
                                                for c in model.cost_aware_configs(args.w_op, args.normalize)}},
                         indent=2))
    else:
        h, w = model.size
        print(f"U-Net base {model.base} at {h}x{w} (w_op {args.w_op}, {args.normalize}-normalised)")
        print(f"{'rank':>4} {'layer':<8} {'ops':>16} {'params':>11} {'score':>6}")
        for r in rows:
            print(f"{r['rank']:>4} {r['paper_name']:<8} {r['ops']:>16,} {r['params']:>11,} {r['score']:6.3f}")
        print(f"\ncost-aware configs ({args.encoding} encoding, G binary ops incl. the masked stem):")
        for k, c in enumerate(model.cost_aware_configs(args.w_op, args.normalize)):
            print(f"  k={k:<2} {c}  {model.config_binary_ops(c, args.encoding) / 1e9:10.2f}")
        print(f"float ops of the first conv and the head: {model.float_ops / 1e9:.2f} G")
    if args.plot:
        from ..search.plots import plot_cost

        print(f"wrote {plot_cost(model, args.plot)}")
    return 0


def configure_logging(worker: int | None = None) -> None:
    """The search's console: one line per finished trial, no expected warnings or tracebacks.

    Process-wide (root logger, Optuna's verbosity, warning filters), so the command sets it, not
    the library; ``run_search`` calls it again in each spawned worker process.
    """
    import optuna

    prefix = "" if worker is None else f"[worker {worker}] "
    logging.basicConfig(format=prefix + "%(message)s")
    logging.getLogger("lightning_mbu.search").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a surplus trial is expected, not worth a traceback
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # lightning vs torch 2.13


def run_search_command(args: argparse.Namespace) -> int:
    from ..files import writable_dir
    from ..search.settings import SearchSettings, TrialSettings
    from ..search.study import run_search
    from ..search.summary import format_summary, summarize, write_summary

    if args.workers_per_gpu is not None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        args.workers = args.workers_per_gpu * max(1, gpus)
    base = args.base
    if base is None:
        if args.teacher is not None:
            from ..distill import read_fp_checkpoint

            base = read_fp_checkpoint(args.teacher).hparams.get("base", 64)
        else:
            base = 8
    lr = args.lr if args.lr is not None else (1e-3 if args.teacher else 3e-3)
    by_paper = {v.lower(): k for k, v in PAPER_NAMES.items()}  # Up-CT4 and up_ct4 both work
    layers = LAYER_NAMES if args.layers == "all" else tuple(
        by_paper.get(n.strip().lower(), n.strip()) for n in args.layers.split(",") if n.strip())
    settings = SearchSettings(
        budget=args.budget, out_dir=args.out, storage=args.storage, study_name=args.study_name,
        layers=layers, choices=("binary", "masked", "int2") if args.kbit else ("binary", "masked"),
        background=args.background, grid=args.grid, cost_base=args.cost_base,
        cost_size=parse_size(args.cost_size), encoding=args.encoding, w_op=args.w_op, prune=not args.no_prune,
        workers=args.workers, heartbeat_interval=args.heartbeat, grace_period=args.grace, seed=args.seed,
        trial=TrialSettings(
            data_root=args.data, layout=args.layout, size=parse_size(args.size), base=base,
            batch_size=args.batch_size, epochs=args.epochs_per_trial,
            limit_train_batches=_batches(args.train_batches), limit_val_batches=_batches(args.val_batches),
            lr=lr, augment=args.augment, seed=args.seed, accelerator=args.accelerator, precision=args.precision,
            num_workers=args.num_workers, threads=args.threads, teacher=args.teacher, kd_weight=args.kd_weight,
            sign_gradient="approx" if args.teacher else "ste", warmup_epochs=args.warmup_epochs,
        ),
    )
    if args.data is not None and not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data} does not exist")
    writable_dir(args.out)  # the study database and the results go there: a read-only folder fails now
    configure_logging()
    start = time.perf_counter()
    study = run_search(settings, worker_setup=configure_logging)
    summary = summarize(study, settings, settings.cost_model())
    summary["wall_seconds"] = time.perf_counter() - start
    paths = write_summary(summary, settings.out_dir)
    print(format_summary(summary))
    print(f"\nsearch took {summary['wall_seconds']:.1f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
