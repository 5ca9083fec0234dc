"""Per-stage breakdown of a packed net: each stage's GEMM shape, bit operations and time.

Geometry comes from the runtime graph alone (``lightning_mbu.ops.graph``): the input is
padded to the file's ``pad_multiple``, max-pools halve, transposed convs double. A
binary layer is an implicit GEMM of ``M`` output positions (input positions for the
2x2 stride-2 transposed conv), ``N`` columns (output channels x bit-planes, x4 kernel
taps for the transposed conv, plus the ones column of the binary AND form) and ``K`` input
bits (32-bit words x taps): ``ops.graph.gemm_shape``, the cost model's geometry too. Its executed
bit operations are ``2 M N K`` (an AND/XOR and a popcount-add per bit, the convention of
the b1 ``mma.sync`` peak), so ``bit_ops / time`` is comparable with that peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..ops.graph import MaxPool, PackedNet, TConvConcat, ThresholdLayer
from .timing import median_ms


@dataclass(frozen=True)
class StageShape:
    stage: str
    kind: str
    mode: str | None  # binary / masked for the GEMM stages
    height: int  # of the stage's output
    width: int
    gemm: tuple[int, int, int] | None  # (M, N, K)

    @property
    def bit_ops(self) -> int | None:
        if self.gemm is None:
            return None
        m, n, k = self.gemm
        return 2 * m * n * k

    def as_dict(self) -> dict:
        return {**asdict(self), "gemm": list(self.gemm) if self.gemm else None, "bit_ops": self.bit_ops}


def stage_shapes(net: PackedNet, batch: int, size: tuple[int, int], encoding: str | None = None) -> list[StageShape]:
    """Output size and GEMM shape (``ThresholdLayer.gemm``, in ``encoding``, default the file's) of every stage of
    ``net`` for ``batch`` images of ``size``."""
    encoding = encoding or net.default_encoding
    mult = int(net.input.get("pad_multiple", 1))
    hw = {"input": tuple(-(-s // mult) * mult for s in size)}  # first conv and final 1x1 keep the size
    shapes = []
    for st in net.stages:
        h, w = hw[st.src]
        gemm = None
        if isinstance(st, ThresholdLayer):
            gemm = st.gemm(batch * h * w, encoding)
        if isinstance(st, MaxPool):
            h, w = h // 2, w // 2
        elif isinstance(st, TConvConcat):
            h, w = 2 * h, 2 * w
        hw[st.name] = (h, w)
        shapes.append(StageShape(st.name, st.kind, getattr(st, "mode", None), h, w, gemm))
    return shapes


@torch.no_grad()
def stage_breakdown(cuda_net, images: torch.Tensor, repeats: int = 10) -> list[dict]:
    """Time every stage of a CUDA packed net alone on ``images`` (CUDA events, median of ``repeats``).

    Uses the backend's per-shape plan (``cuda_net.plan(shape).step_of[stage]``, one ``Step``
    per stage): a full ``run`` fills every stage's input buffer first, then each
    stage is relaunched on its own. Rows carry the GEMM shape, bit operations and TOPS.
    """
    net: PackedNet = cuda_net.net
    cuda_net.run(images)  # builds the plan for this shape and leaves every buffer filled
    n, c, h, w = images.shape
    mult = int(net.input.get("pad_multiple", 1))
    plan = cuda_net.plan((n, c, -(-h // mult) * mult, -(-w // mult) * mult))
    stream = torch.cuda.current_stream().cuda_stream
    rows = []
    for shape in stage_shapes(net, n, (h, w), cuda_net.encoding):
        step = plan.step_of[shape.stage]
        ms = median_ms(lambda: step(stream), repeats, warmup=1)
        kernel = plan.choices.get(shape.stage)
        rows.append({**shape.as_dict(), "ms": ms, "kernel": getattr(kernel, "name", None),
                     "tops": shape.bit_ops / ms / 1e9 if shape.bit_ops else None})
    return rows
