"""Tune and time the CUDA backend on a full-size MBU-Net; write the results as JSON.

For each input size: every binary layer is timed with every kernel of the table that accepts it
(CUDA events, median), the fastest becomes the table's choice for that layer shape, then the
whole net is timed eagerly and as a CUDA-graph replay, next to the FP16 channels_last PyTorch
U-Net of the same width. A batch-consistency check (the last image of the batch run alone)
guards the large-batch offsets. Run on the GPU machine::

    python -m lightning_mbu.bench.kernels --out results.json --sizes 640x959,480x640,512x512 --batch 64
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from cutlass_kernels.table import layer_key, save_choices

from ..export import fold, pack_folded
from ..model import MBUNet
from ..ops import cuda
from ..ops.graph import BinaryConv, FinalConv, FirstConv, MaxPool
from .report import git_commit
from .timing import median_ms


def layer_ops(st, n: int, h: int, w: int) -> int:
    """Ops of the layer itself: 2 per real multiply-add of +-1 inputs and weights."""
    if isinstance(st, BinaryConv):
        return 2 * n * h * w * st.cout * 9 * sum(st.cin_segments)
    return 2 * n * h * w * 4 * st.cout * sum(st.cin_segments)


def gemm_ops(step: cuda.Step, encoding: str) -> int:
    """Ops the tensor cores run: the layer's GEMM over every column (both planes) and every padded channel,
    less the AND form's ones column (the window count, a kernel of its own timed apart)."""
    m, n, k = step.stage.gemm(step.args.n * step.args.h * step.args.w, encoding)
    return 2 * m * (n - step.layer.counts) * k


def time_layers(net: cuda.CUDAPackedNet, plan, stream: int, unfused: bool) -> tuple[list, dict]:
    lib = net.lib
    rows, choices = [], {}
    for step in (s for s in plan.steps if s.table_kernel):
        args, layer, st = step.args, step.layer, step.stage
        key = layer_key(net.encoding, layer.r, args.c_bits, args.k_cols, args.h, args.w)
        timings = {}
        for spec in lib.candidates(net.encoding, args):
            fn = lib.conv_fn(spec)
            timings[spec.name] = median_ms(lambda: cuda._check(fn(args, stream), spec.name))
        best = min(timings, key=timings.get)
        choices[key] = best
        count_ms = median_ms(lambda: step.window_count(stream)) if step.window_count else 0.0
        ops = layer_ops(st, args.n, args.h, args.w)
        row = {"stage": st.name, "kind": st.kind, "mode": st.mode, "in_hw": [args.h, args.w],
               "cin": sum(st.cin_segments), "cout": st.cout, "c_bits": args.c_bits, "k_cols": args.k_cols,
               "kernel": best, "ms": timings[best], "window_count_ms": count_ms,
               "tops": ops / timings[best] / 1e9, "gemm_tops": gemm_ops(step, net.encoding) / timings[best] / 1e9,
               "candidates_ms": timings}
        acc_bytes = args.n * args.h * args.w * args.k_cols * 4
        if unfused and acc_bytes < (1 << 31):  # CUTLASS's own int32 epilogue, for the fusion's gain
            acc = torch.empty(acc_bytes // 4, dtype=torch.int32, device=net.device)
            fn32 = lib.conv_fn(lib.table.by_name(best), "_int32")
            if fn32(args, acc.data_ptr(), stream) == 0:  # CUTLASS refuses activations of 2^31 bits or more
                row["int32_epilogue_ms"] = median_ms(lambda: cuda._check(fn32(args, acc.data_ptr(), stream), "int32"))
                row["int32_plus_pack_ms"] = median_ms(lambda: (
                    cuda._check(fn32(args, acc.data_ptr(), stream), "int32"),
                    cuda._check(lib.lib.mbu_threshold_pack(args, acc.data_ptr(), stream), "pack")))
            del acc
        rows.append(row)
    return rows, choices


def time_other_stages(net, plan, stream: int) -> list:
    rows = []
    for st in net.net.stages:
        if isinstance(st, (FirstConv, MaxPool, FinalConv)):
            step = plan.step_of[st.name]
            rows.append({"stage": st.name, "kind": st.kind, "ms": median_ms(lambda: step(stream))})
    return rows


def fp16_baseline_ms(base: int, shape) -> float:
    model = MBUNet(None, base=base).cuda().half().to(memory_format=torch.channels_last).eval()
    x = torch.randn(shape, device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
    with torch.no_grad():
        return median_ms(lambda: model(x), repeats=5, warmup=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--sizes", default="640x959,480x640,512x512")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--config", default="BBBBMMMMBBBB")
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--save-choices", action="store_true", help="write the measured choices into kernels.json")
    p.add_argument("--no-fp16", action="store_true")
    p.add_argument("--commit", default=None, help="the commit measured (default: git describe of this checkout)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    packed = pack_folded(fold(MBUNet(args.config, base=args.base).eval()))
    net = cuda.build(packed)
    stream = torch.cuda.current_stream().cuda_stream
    props = torch.cuda.get_device_properties(0)
    report = {"card": props.name, "sm": net.cc, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "commit": args.commit or git_commit(Path(__file__).resolve().parent), "torch": torch.__version__,
              "cuda": torch.version.cuda,
              "config": args.config, "base": args.base, "batch": args.batch, "encoding": net.encoding, "sizes": {}}
    all_choices = {}
    for size in args.sizes.split(","):
        h, w = map(int, size.split("x"))
        x = torch.randn(args.batch, 3, h, w, device="cuda")
        shape = tuple(net._pad(x).shape)
        net._plans.clear()
        plan = net.plan(shape)
        net.run(x)  # real activations in every buffer before timing the layers on them
        layers, choices = time_layers(net, plan, stream, unfused=True)
        all_choices.update(choices)
        net.lib.table.choices.setdefault(f"sm{net.cc}", {}).update(choices)
        net._plans.clear()
        plan = net.plan(shape)
        net.run(x)
        assert all(plan.choices[r["stage"]].name == r["kernel"] for r in layers)
        others = time_other_stages(net, plan, stream)
        with torch.no_grad():
            eager = median_ms(lambda: net.run(x), repeats=args.reps)
            graph = median_ms(lambda: net(x), repeats=args.reps)
            # the last image alone must give the same logits as inside the batch (large-offset check)
            full = net(x)
            alone = cuda.build(packed)(x[-1:])
        consistent = bool(torch.equal(full[-1:], alone))
        entry = {"input_hw": [h, w], "padded_hw": list(shape[-2:]), "eager_ms_per_image": eager / args.batch,
                 "graph_ms_per_image": graph / args.batch, "batch_consistent": consistent,
                 "binary_layers": layers, "other_stages": others,
                 "sum_layer_ms_per_image": (sum(r["ms"] + r["window_count_ms"] for r in layers)
                                            + sum(r["ms"] for r in others)) / args.batch}
        if not args.no_fp16:
            entry["fp16_channels_last_ms_per_image"] = fp16_baseline_ms(args.base, (args.batch, 3, *shape[-2:])) \
                / args.batch
        report["sizes"][size] = entry
        print(f"== {props.name} {size} batch {args.batch} ({args.config}, base {args.base}): "
              f"graph {entry['graph_ms_per_image']:.4f} ms/image, eager {entry['eager_ms_per_image']:.4f}, "
              f"fp16 {entry.get('fp16_channels_last_ms_per_image', float('nan')):.4f}, consistent={consistent}")
        for r in layers:
            extra = f" int32+pack {r['int32_plus_pack_ms']:.3f}" if "int32_plus_pack_ms" in r else ""
            print(f"  {r['stage']:12s} {r['mode']:6s} {r['in_hw'][0]:4d}x{r['in_hw'][1]:<4d} {r['cin']:5d}->{r['cout']:<5d}"
                  f" {r['ms']:8.3f} ms {r['tops']:7.0f} TOPS (gemm {r['gemm_tops']:6.0f}) cnt {r['window_count_ms']:.3f}"
                  f" {r['kernel']}{extra}")
        for r in others:
            print(f"  {r['stage']:12s} {r['kind']:12s} {r['ms']:8.3f} ms")
    report["choices"] = {f"sm{net.cc}": all_choices}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.save_choices:
        save_choices(report["choices"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
