"""The reference packed engine: runs a PackedNet on the CPU from bits, with numpy popcounts.

Binary layers are popcount GEMMs over im2col'd packed words (two 32-bit words viewed as one
uint64), in the XOR or the AND form of docs/format.md, compared against ``raw_thresholds``.
Every other backend is tested stage by stage against ``CPUPackedNet.run``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from cutlass_kernels.table import check_encoding

from .bits import channel_mask, pack_bits
from .float_ops import final_conv_float, first_conv_float
from .graph import BinaryConv, FinalConv, FirstConv, MaxPool, PackedNet, TConvConcat, raw_thresholds
from .preprocess import prepare

#: output elements per popcount block: keeps a block's temporaries in the L2 cache
_BLOCK_ELEMS = 1 << 15


def _as_u64(words_2d: np.ndarray) -> np.ndarray:
    """``(rows, K)`` int32 words -> ``(rows, ceil(K/2))`` uint64 (a zero word appended where K is odd)."""
    if words_2d.shape[1] % 2:
        words_2d = np.concatenate([words_2d, np.zeros((words_2d.shape[0], 1), np.int32)], axis=1)
    return np.ascontiguousarray(words_2d).view(np.uint64)


class _PopcountLayer:
    """One binary layer prepared for its encoding: column planes, the bitwise op, and thresholds on r."""

    def __init__(self, stage: BinaryConv | TConvConcat, encoding: str):
        # GEMM columns: one per output channel (conv) or per (channel, kh, kw) (transposed conv)
        planes = stage.planes.reshape(stage.planes.shape[0], -1, stage.TAPS * stage.cin_words)
        ones = np.tile(channel_mask(stage.cin_segments), stage.TAPS)[None]
        # r = sum_j coef_j * popc(a' op block_j) over blocks of (columns, K) planes (docs/format.md section 4)
        if stage.mode == "masked":
            blocks = [planes[1], planes[0]] if encoding == "xor" else [planes[0], planes[1]]
            coefs = (1, -1)
        else:
            blocks, coefs = ([planes[0]], (1,)) if encoding == "xor" else ([planes[0], ones], (2, -1))
        self.op = np.bitwise_xor if encoding == "xor" else np.bitwise_and
        self.coefs, self.widths = coefs, [b.shape[0] for b in blocks]
        self.columns = _as_u64(np.concatenate(blocks)).T.copy()  # (K64, total columns)
        thr, d = raw_thresholds(stage, encoding)
        self.d = d.reshape(-1).astype(np.int32)
        self.dthr = self.d * thr.reshape(-1).astype(np.int32)

    def raw(self, a: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
        """``a``: (M, K) int32 im2col words -> raw counts r, (M, columns) int32."""
        a_t = _as_u64(a).T.copy()  # (K64, M): each k is one contiguous row
        k64, m = a_t.shape
        total = self.columns.shape[1]
        counts = np.zeros((m, total), dtype=np.int32)
        rows = max(1, _BLOCK_ELEMS // total)

        def block(i):
            out = counts[i:i + rows]
            tmp = np.empty(out.shape, np.uint64)
            cnt = np.empty(out.shape, np.uint8)
            for k in range(k64):
                self.op(a_t[k, i:i + rows, None], self.columns[k][None, :], out=tmp)
                np.bitwise_count(tmp, out=cnt)
                np.add(out, cnt, out=out)

        list(pool.map(block, range(0, m, rows)))
        r = np.zeros((m, self.widths[0]), dtype=np.int32)
        start = 0
        for coef, width in zip(self.coefs, self.widths):
            r += coef * counts[:, start:start + width]  # a 1-wide block (the ones column) broadcasts
            start += width
        return r

    def bits(self, a: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
        return self.d * self.raw(a, pool) >= self.dthr


def _im2col3x3(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) words, padded by one pixel of 0 words (-1) -> (N*H*W, 9*C), taps in (kh, kw) order."""
    n, h, w, c = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 3, 3, c), dtype=x.dtype)
    for kh in range(3):
        for kw in range(3):
            cols[:, :, :, kh, kw] = p[:, kh:kh + h, kw:kw + w]
    return cols.reshape(n * h * w, 9 * c)


class CPUPackedNet(nn.Module):
    """A PackedNet on the CPU: ``forward(images) -> logits``; ``run`` returns every stage's output.

    Args:
        net: the packed graph (validated here).
        encoding: "xor" or "and" (default: the file's ``default_encoding``).
        threads: worker threads for the popcount GEMMs (default: all cores).
    """

    def __init__(self, net: PackedNet, encoding: str | None = None, threads: int | None = None):
        super().__init__()
        net.validate()
        self.net = net
        self.encoding = check_encoding(encoding or net.default_encoding)
        self.threads = threads or os.cpu_count() or 1
        self._layers = {s.name: _PopcountLayer(s, self.encoding) for s in net.threshold_layers}

    def _stage(self, st, env: dict, pool: ThreadPoolExecutor):
        if isinstance(st, FirstConv):
            x = torch.as_tensor(env[st.src])
            bits = first_conv_float(x, torch.from_numpy(st.weight), torch.from_numpy(st.scale),
                                    torch.from_numpy(st.shift), st.pad_value)
            return pack_bits(bits.permute(0, 2, 3, 1).numpy(), (st.cout,))
        a = env[st.src]
        if isinstance(st, MaxPool):
            return a[:, 0::2, 0::2] | a[:, 1::2, 0::2] | a[:, 0::2, 1::2] | a[:, 1::2, 1::2]
        if isinstance(st, BinaryConv):
            n, h, w, _ = a.shape
            bits = self._layers[st.name].bits(_im2col3x3(a), pool)
            return pack_bits(bits.reshape(n, h, w, st.cout_pad), (st.cout_pad,))
        if isinstance(st, TConvConcat):
            n, h, w, c = a.shape
            bits = self._layers[st.name].bits(a.reshape(-1, c), pool)
            # (n, h, w, o, kh, kw) -> (n, 2h, 2w, o): output pixel (2i + kh, 2j + kw)
            bits = bits.reshape(n, h, w, st.cout_pad, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * h, 2 * w, -1)
            return np.concatenate([env[st.skip], pack_bits(bits, (st.cout_pad,))], axis=-1)
        if isinstance(st, FinalConv):
            u8 = np.ascontiguousarray(a).view(np.uint8)
            pm1 = torch.from_numpy(np.unpackbits(u8, axis=-1, bitorder="little").astype(np.float32) * 2 - 1)
            return final_conv_float(pm1.permute(0, 3, 1, 2), torch.from_numpy(st.weight), torch.from_numpy(st.bias))
        raise TypeError(f"CPU engine has no implementation for stage kind {st.kind!r}")

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict:
        """Every stage's output for images ``x`` (N, C, H, W; see ``preprocess.prepare``): bit words (NHWC int32),
        logits last (padded size)."""
        env = {"input": prepare(x, self.net.input, device="cpu")}
        with ThreadPoolExecutor(self.threads) as pool:
            for st in self.net.stages:
                env[st.name] = self._stage(st, env, pool)
        return env

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W) for an image batch: uint8 pixels, or floats in [0, 1] (``preprocess.prepare``)."""
        logits = self.run(x)[self.net.stages[-1].name]
        return logits[..., : x.shape[-2], : x.shape[-1]].to(getattr(x, "device", "cpu"))


def build(net: PackedNet, encoding: str | None = None, threads: int | None = None) -> CPUPackedNet:
    return CPUPackedNet(net, encoding=encoding, threads=threads)
