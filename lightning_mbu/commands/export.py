"""`lightning-mbu export CKPT -o model.mbu`: a trained checkpoint to a packed model file."""

from __future__ import annotations

from pathlib import Path

from cutlass_kernels.table import DEFAULT_ENCODING, ENCODINGS

from ..ops.preprocess import NORMALIZATIONS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="fold and bit-pack a trained MBU-Net checkpoint into a .mbu file",
                              description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="Lightning checkpoint of a quantized SegmentationModule")
    p.add_argument("-o", "--output", type=Path, default=None, help="output file (default: CKPT with suffix .mbu)")
    p.add_argument("--encoding", choices=ENCODINGS, default=DEFAULT_ENCODING,
                   help="dot-product form backends use by default (both are exact; a backend may override)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                   help="input normalisation to store (default: the one the checkpoint's data module recorded)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file (never the checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_checkpoint
    from ..files import atomic_path, check_output

    out = check_output(args.output or args.checkpoint.with_suffix(".mbu"), inputs=[args.checkpoint], force=args.force)
    with atomic_path(out) as tmp:  # a failed or interrupted export leaves no partial file and any old one intact
        packed = export_checkpoint(args.checkpoint, tmp, default_encoding=args.encoding,
                                   normalization=args.normalization)
    layers = packed.threshold_layers
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB): config {packed.model['config']}, "
          f"{len(packed.stages)} stages, {len(layers)} binary layers "
          f"({sum(s.mode == 'masked' for s in layers)} masked)")
    return 0
