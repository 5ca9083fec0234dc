"""The CUDA backend against the CPU reference engine on one .mbu file and real images, stage by stage.

    python scripts/backend_agreement.py MODEL.mbu IMAGE_DIR_OR_GLOB... [--limit 32] [--output agreement.json]

For every stage: how many output words differ. For the first (float) stage also how many differing bits
have a float64 pre-activation within 1e-4 of the threshold (float summation order, not a kernel error).
Final masks: differing pixels. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from lightning_mbu.ops import cpu, cuda
from lightning_mbu.ops.bits import pack_bits
from lightning_mbu.ops.float_ops import first_conv_preactivation
from lightning_mbu.ops.format import load
from lightning_mbu.ops.preprocess import as_batch, prepare
from lightning_mbu.predict import find_images
from lightning_mbu.data.dataset import read_image


def first_stage_near(st, x_prepared: torch.Tensor) -> np.ndarray:
    """Bits of the first stage whose float64 pre-activation is within 1e-4 of its threshold."""
    y = first_conv_preactivation(x_prepared.double(),
                                 *(torch.from_numpy(t).double() for t in (st.weight, st.scale, st.shift)),
                                 float(st.pad_value))
    return pack_bits((y.abs() < 1e-4).permute(0, 2, 3, 1).numpy(), (st.cout,))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    packed = load(a.model)
    ref_net, gpu_net = cpu.build(packed), cuda.build(packed)
    report = {"model": a.model, "images": 0, "stages": {}, "first_stage_bits_differing": 0,
              "first_stage_bits_differing_near_threshold": 0, "pixels": 0, "differing_pixels": 0}
    for path in find_images(a.inputs)[: a.limit]:
        x = as_batch(read_image(path))
        ref, got = ref_net.run(x), gpu_net.run(x.cuda())
        for st in packed.stages:
            r, g = ref[st.name], got[st.name].cpu()
            g = g.numpy() if st.kind != "final_conv" else g
            if st.kind == "final_conv":
                h, w = x.shape[-2:]
                rm, gm = r[..., :h, :w] > 0, g[..., :h, :w] > 0
                report["pixels"] += rm.numel()
                report["differing_pixels"] += int((rm != gm).sum())
                continue
            diff = int(np.count_nonzero(r != g))
            report["stages"][st.name] = report["stages"].get(st.name, 0) + diff
        first = packed.stages[0]
        xr = prepare(x, packed.input, device="cpu")
        r0, g0 = ref[first.name], got[first.name].cpu().numpy()
        near = first_stage_near(first, xr)[..., : r0.shape[-1]]
        bits = np.unpackbits((r0 ^ g0).view(np.uint8)).sum()
        report["first_stage_bits_differing"] += int(bits)
        report["first_stage_bits_differing_near_threshold"] += int(np.unpackbits(((r0 ^ g0) & near).view(np.uint8)).sum())
        report["images"] += 1
    text = json.dumps(report, indent=1)
    if a.output:
        open(a.output, "w").write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
