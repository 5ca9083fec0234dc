"""`lightning-mbu predict MODEL INPUT... --out DIR`: image files to PNG masks with a checkpoint or a packed model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..ops.preprocess import NORMALIZATIONS
from ..predict import BACKENDS, PROBABILITY_FORMATS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment image files with a .ckpt or .mbu model: one PNG mask per image",
        description="Segment images with a trained checkpoint (.ckpt, PyTorch) or a packed model (.mbu, binary "
                    "kernels). Each image gives OUT/<stem>.png (0/255 mask at the image's size), optionally "
                    "<stem>_overlay.png and <stem>_prob.png|npy. Images are read and normalised as in training, "
                    "and resized to the training size when the model records it. Existing outputs are kept "
                    "unless --force; an input is never overwritten.")
    p.add_argument("model", type=Path, help="a SegmentationModule checkpoint (.ckpt) or a packed model (.mbu)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their images) or glob patterns (quoted, e.g. 'data/*.png')")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="cpu, cuda, or auto: cuda when a GPU is available (default auto)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png: the mask over the image")
    p.add_argument("--probabilities", choices=PROBABILITY_FORMATS, default=None,
                   help="also write probability maps: png (16-bit, p * 65535) or npy (float32) (default: none)")
    p.add_argument("--normalization", choices=NORMALIZATIONS[:-1], default=None,
                   help="the rule training used, for a model that records none (a format 1 .mbu file, a "
                        "checkpoint trained without SegmentationDataModule) (default: the model's)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress-bar", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..predict import predict_files

    s = predict_files(args.model, args.inputs, args.out, overlay=args.overlay, probabilities=args.probabilities,
                      force=args.force, backend=args.backend, normalization=args.normalization,
                      progress=args.progress)
    print(f"segmented {s.images} image{'s' * (s.images != 1)} in {s.seconds:.2f} s "
          f"({1000 * s.per_image:.1f} ms per image; {s.engine}) -> {args.out}")
    if s.failed:
        for msg in s.failed:
            print(f"lightning-mbu predict: error: {msg}", file=sys.stderr)
        print(f"lightning-mbu predict: error: {len(s.failed)} of {len(s.failed) + s.images} images could not be "
              "read; nothing was written for them", file=sys.stderr)
        return 2
    return 0
