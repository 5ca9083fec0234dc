"""``lightning-mbu bench``: time FP32/FP16 PyTorch U-Nets and packed MBU-Nets on a GPU, write JSON, table, plots."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from ..config import parse_size

DEFAULT_MODELS = "fp32,fp16,binary,cost-aware"


def add_parser(subparsers) -> None:
    from ..bench.baselines import VARIANTS
    from ..bench.presets import PRESETS

    p = subparsers.add_parser(
        "bench", help="benchmark latency, throughput and energy per image (needs a CUDA GPU)",
        description=__doc__,
    )
    w = p.add_argument_group("workload")
    w.add_argument("--preset", default="carvana", choices=sorted(PRESETS),
                   help="input size and per-precision batch of the paper's Table A.2 (default: carvana)")
    w.add_argument("--size", nargs="+", metavar="SIZE", help="input size, HxW, H W or N (default: the preset's)")
    w.add_argument("--batch", type=int, help="batch size for every model (default: the preset's)")
    w.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated: fp32, fp16, binary, cost-aware (the 13 configs masking the k "
                        "cheapest layers), 12-letter configs (B/M), .mbu files (default: %(default)s)")
    w.add_argument("--variants", default=",".join(VARIANTS),
                   help="baseline variants to time; the fastest is reported as best (default: %(default)s)")
    w.add_argument("--base", type=int, default=64, help="U-Net base width (default: 64, the paper's)")
    w.add_argument("--in-channels", type=int, default=3, help="input channels of the benchmarked nets")
    w.add_argument("--num-classes", type=int, default=1, help="output channels of the benchmarked nets")
    w.add_argument("--w-op", type=float, default=0.5, help="cost-aware ranking weight of ops (eq. 2)")
    t = p.add_argument_group("timing")
    t.add_argument("--warmup", type=int, default=3, help="untimed batches before timing (default: 3)")
    t.add_argument("--repeats", type=int, default=20, help="timed batches at least (default: 20); the median is reported")
    t.add_argument("--inputs", type=int, default=3, help="rotating input buffers (default: 3)")
    t.add_argument("--min-energy-seconds", type=float, default=3.0,
                   help="time the batches for at least this long, for the power sensor (default: 3)")
    t.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the baselines eagerly instead of replaying CUDA graphs")
    t.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                   help="let cuDNN's heuristics pick conv algorithms instead of autotuning them")
    t.add_argument("--compile-mode", default=None, help="torch.compile mode for the compile variant (default: inductor default)")
    t.add_argument("--tf32", action="store_true", help="let the FP32 baseline use TF32 tensor cores (default: strict FP32)")
    t.add_argument("--exact-size", nargs="+", default=["128x128"], metavar="SIZE",
                   help="crop of one image checked bit for bit against the CPU engine (default: %(default)s)")
    t.add_argument("--breakdown", action="store_true", help="also time every stage of each packed net")
    t.add_argument("--hand-written", action="store_true",
                   help="packed nets run the hand-written stage kernels (K-packed 3x3 conv, GEMM transposed conv, "
                        "tensor-core first conv; AND encoding) instead of CUTLASS")
    t.add_argument("--device", default="cuda:0", help="CUDA device to time on")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", default="benchmarks/results", help="where results go (default: %(default)s)")
    o.add_argument("--name", help="file name stem (default: <preset>-<UTC date and time>)")
    o.add_argument("--accuracy", action="append", default=[], metavar="JSON",
                   help="eval/search JSON with Dice per config: adds the speed-accuracy Pareto plot (repeatable)")
    o.add_argument("--from-json", metavar="JSON", nargs="+",
                   help="measure nothing: re-render the table and plots of earlier results files, merged into "
                        "one when several are given (same GPU); no GPU needed (default: measure)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.presets import resolve
    from ..bench.report import load_accuracy, merge, read_json, write_json, write_report

    accuracy = load_accuracy(args.accuracy) if args.accuracy else None
    if args.from_json:
        result = merge([read_json(p) for p in args.from_json])
        stem = Path(args.output_dir) / (args.name or Path(args.from_json[0]).stem)
    else:
        workload = resolve(args.preset, args.size, args.batch)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        stem = Path(args.output_dir) / (args.name or f"{workload.name}-{date}")
        # the JSON is rewritten after every model, so a run cut short keeps what it measured
        result = _measure(args, workload, parse_size(args.exact_size), lambda r: write_json(r, f"{stem}.json"))
        if result is None:
            return 2
    for path in write_report(result, stem, accuracy):
        print(f"wrote {path}")
    print()
    print(Path(f"{stem}.md").read_text())
    return 0


def _measure(args, workload, exact_size, on_update) -> dict | None:
    from ..bench.baselines import VARIANTS
    from ..bench.suite import Bench, NeedsCUDA, Settings

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"--variants: unknown {', '.join(bad)}; valid: {', '.join(VARIANTS)}")
    for flag, value in (("--repeats", args.repeats), ("--inputs", args.inputs), ("--base", args.base)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    settings = Settings(
        workload=workload, models=tuple(args.models.split(",")), variants=variants, base=args.base,
        in_channels=args.in_channels, num_classes=args.num_classes, warmup=args.warmup, repeats=args.repeats,
        inputs=args.inputs, min_energy_seconds=args.min_energy_seconds, cuda_graphs=args.cuda_graphs,
        cudnn_benchmark=args.cudnn_benchmark,
        compile_mode=args.compile_mode, tf32=args.tf32, exact_size=exact_size, w_op=args.w_op,
        breakdown=args.breakdown, hand_written=args.hand_written, device=args.device,
        extra={"arguments": {k: v for k, v in vars(args).items() if k != "func"}},
    )
    try:
        bench = Bench(settings, log=lambda msg: print(msg, flush=True))
    except NeedsCUDA as e:
        print(f"lightning-mbu bench: error: {e}", file=sys.stderr)
        return None
    return bench.run(on_update)
