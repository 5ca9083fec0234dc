"""`lightning-mbu info`: the layers of an MBU-Net, their modes, parameters and weight sparsity."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import LAYER_NAMES, PAPER_NAMES, parse_config
from ..files import check_output, write_json
from .lightning_args import add_force_arg, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="model summary: layers, modes, parameters, per-layer sparsity",
        description="Summarise a checkpoint (or, without one, the net --config and --base describe): each layer's "
                    "weight mode, parameter count and fraction of -1 / 0 / +1 quantized weights.",
    )
    p.add_argument("checkpoint", type=Path, nargs="?", help="a SegmentationModule checkpoint")
    p.add_argument("--config", default=None, help="without a checkpoint: 12 layer modes, or 'fp' (default fp)")
    p.add_argument("--base", type=positive_int, default=64, help="without a checkpoint: width of the first level")
    p.add_argument("--output", type=Path, default=None, help="also write the summary as JSON here (default: print only)")
    add_force_arg(p)
    p.set_defaults(func=run)


def load_net(args: argparse.Namespace):
    from ..checkpoint import load_checkpoint
    from ..model import MBUNet

    if args.checkpoint is None:
        return MBUNet(parse_config(args.config), base=args.base), "untrained"
    return load_checkpoint(args.checkpoint).net(), str(args.checkpoint)


def layer_rows(net) -> list[dict]:
    """One row per weight-bearing block: the FP first conv, the stem, the 12 layers, the FP output conv."""
    from ..model import weight_states

    blocks = [("inc1", "In-C1", net.inc.conv1, "fp"),
              ("stem", "In-C2", net.inc.conv2, net.stem_mode if net.is_quantized else "fp")]
    blocks += [(n, PAPER_NAMES[n], getattr(net, n), net.config[n] if net.is_quantized else "fp") for n in LAYER_NAMES]
    blocks.append(("outc", "Out-C", net.outc, "fp"))
    rows = []
    for name, paper, block, mode in blocks:
        convs = [m for m in block.modules() if hasattr(m, "quantized_weight")]
        row = {"layer": name, "paper": paper, "mode": mode, "params": sum(p.numel() for p in block.parameters())}
        if convs and convs[0].weight_quantizer.ternary:
            row.update(weight_states(convs))
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ["layer", "paper", "mode", "params", "-1", "0", "+1"]
    cells = [head] + [[r["layer"], r["paper"], r["mode"], f"{r['params']:,}",
                       *(f"{r[k]:.3f}" if k in r else "-" for k in ("neg", "zero", "pos"))] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths)))
                     for c in cells)


def run(args: argparse.Namespace) -> int:
    if args.output:
        check_output(args.output, inputs=[args.checkpoint], force=args.force)
    net, source = load_net(args)
    rows = layer_rows(net)
    total = sum(p.numel() for p in net.parameters())
    t = {name: float(q.t) for name, q in net.masked_quantizers()}
    print(f"MBUNet from {source}: config {net.config or 'full precision'}, base {net.base}, "
          f"stem {net.stem_mode if net.is_quantized else 'fp'}, {total:,} parameters")
    if t:
        print("masking factor t: " + ", ".join(f"{k}={v:.3g}" for k, v in t.items()))
    print(format_rows(rows))
    if args.output:
        write_json(args.output, {"source": source, "config": str(net.config or "fp"), "base": net.base,
                                 "parameters": total, "quant": net.quant.as_dict(), "t": t, "layers": rows})
        print(f"wrote {args.output}")
    return 0
