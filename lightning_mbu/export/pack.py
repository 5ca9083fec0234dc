"""Pack a folded net: {-1, 0, +1} weights as bit-planes, thresholds padded, into a PackedNet (docs/format.md)."""

from __future__ import annotations

import numpy as np
import torch

from ..ops.bits import WORD_BITS, pack_bits, segment_positions, words
from ..ops.graph import PLANES, BinaryConv, FinalConv, FirstConv, MaxPool, PackedNet, Stage, TConvConcat
from ..ops.preprocess import input_spec
from .fold import FoldedFinal, FoldedFirst, FoldedLayer, FoldedNet, FoldedPool


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pack_planes(weight, mode: str, cin_segments, cout_pad: int) -> np.ndarray:
    """``(Cout, KH, KW, Cin)`` weights in {-1, 0, +1} -> ``(P, Cout_pad, KH, KW, Cin_words)`` int32 planes."""
    if mode not in PLANES:
        raise ValueError(f"pack_planes: weight mode {mode!r} has no bit-plane form")
    w = _numpy(weight)
    cout = w.shape[0]
    planes = [w > 0, w < 0] if mode == "masked" else [w > 0]
    out = np.stack([pack_bits(p, cin_segments) for p in planes])
    pad = np.zeros((out.shape[0], cout_pad - cout, *out.shape[2:]), dtype=np.int32)
    return np.concatenate([out, pad], axis=1)


def _thresholds(layer: FoldedLayer, cout_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """theta/direction padded to ``cout_pad`` with always-off channels (theta = n + 1, direction +1)."""
    theta = np.full(cout_pad, layer.n + 1, dtype=np.int32)
    direction = np.ones(cout_pad, dtype=np.int8)
    theta[: len(layer.theta)] = _numpy(layer.theta)
    direction[: len(layer.direction)] = _numpy(layer.direction)
    return theta, direction


def _pack_step(step, segs: dict) -> Stage:
    if isinstance(step, FoldedFirst):
        w = _numpy(step.weight).astype(np.float32)
        return FirstConv(step.name, step.src, cin=w.shape[1], cout=w.shape[0], pad_value=step.pad_value,
                         weight=w, scale=_numpy(step.scale).astype(np.float32),
                         shift=_numpy(step.shift).astype(np.float32))
    if isinstance(step, FoldedPool):
        return MaxPool(step.name, step.src)
    cin_segments = segs[step.src]
    if isinstance(step, FoldedLayer):
        # to (Cout, KH, KW, Cin): conv weights are (Cout, Cin, KH, KW), transposed ones (Cin, Cout, KH, KW)
        w = step.weight.permute(1, 2, 3, 0) if step.transposed else step.weight.permute(0, 2, 3, 1)
        cout = w.shape[0]
        cout_pad = words(cout) * WORD_BITS
        theta, direction = _thresholds(step, cout_pad)
        kwargs = dict(mode=step.mode, cin_segments=tuple(cin_segments), cout=cout,
                      planes=pack_planes(w, step.mode, cin_segments, cout_pad), theta=theta, direction=direction)
        if step.transposed:
            return TConvConcat(step.name, step.src, skip=step.skip, **kwargs)
        return BinaryConv(step.name, step.src, **kwargs)
    if isinstance(step, FoldedFinal):
        w = _numpy(step.weight).astype(np.float32)
        full = np.zeros((w.shape[0], sum(words(c) for c in cin_segments) * WORD_BITS), dtype=np.float32)
        full[:, segment_positions(cin_segments)] = w
        return FinalConv(step.name, step.src, cin_segments=tuple(cin_segments), num_classes=w.shape[0],
                         weight=full, bias=_numpy(step.bias).astype(np.float32))
    raise TypeError(f"no packed form for folded step {type(step).__name__}")


def pack_folded(folded: FoldedNet) -> PackedNet:
    """The PackedNet of a FoldedNet: same stages, weights as bit-planes, activations as words."""
    segs: dict[str, tuple[int, ...]] = {}
    stages = []
    for step in folded.steps:
        stage = _pack_step(step, segs)
        segs[stage.name] = tuple(stage.out_segments(segs))
        stages.append(stage)
    # no normalisation until the exporter stores training's (export_model)
    net = PackedNet(stages, model=dict(folded.model), input=input_spec(stages[0].cin, "none", folded.pad_multiple))
    net.validate()
    return net
