"""Bit layouts: +-1 activations and {-1, 0, +1} weight planes as 32-bit words (docs/format.md sections 2-3).

Channel ``c`` of a segment goes to word ``c // 32``, bit ``c % 32`` (least significant first), +1 -> 1;
a tensor made of several segments (a concatenation) pads each one to whole words.
"""

from __future__ import annotations

import numpy as np

#: bits per packed word along the channel axis
WORD_BITS = 32


def words(channels: int) -> int:
    return -(-int(channels) // WORD_BITS)


def segment_positions(segments) -> np.ndarray:
    """Bit position of each real channel of a tensor made of ``segments`` (each padded to 32)."""
    starts = np.cumsum([0] + [words(c) * WORD_BITS for c in segments[:-1]])
    return np.concatenate([s + np.arange(c) for s, c in zip(starts, segments)]).astype(np.int64)


def channel_mask(segments) -> np.ndarray:
    """``(words,)`` int32 words with a 1 at every real channel position (the AND form's ``m``)."""
    bits = np.zeros(sum(words(c) for c in segments) * WORD_BITS, dtype=np.uint8)
    bits[segment_positions(segments)] = 1
    return np.packbits(bits, bitorder="little").view("<u4").view(np.int32)


def popcount(a: np.ndarray, axis=None) -> np.ndarray:
    return np.bitwise_count(a.view(np.uint32)).sum(axis=axis, dtype=np.int64)


def pack_bits(bits, segments) -> np.ndarray:
    """``(..., C)`` booleans (True = +1; numpy or torch) -> ``(..., words)`` int32, channels placed by ``segments``."""
    bits = (bits.detach().cpu().numpy() if hasattr(bits, "detach") else np.asarray(bits)).astype(bool)
    pos = segment_positions(segments)
    if bits.shape[-1] != len(pos):
        raise ValueError(f"pack_bits: {bits.shape[-1]} channels given, segments {list(segments)} hold {len(pos)}")
    full = np.zeros(bits.shape[:-1] + (sum(words(c) for c in segments) * WORD_BITS,), dtype=np.uint8)
    full[..., pos] = bits
    return np.ascontiguousarray(np.packbits(full, axis=-1, bitorder="little")).view("<u4").view(np.int32)


def unpack_bits(packed: np.ndarray, segments) -> np.ndarray:
    """``(..., words)`` int32 -> ``(..., C)`` booleans of the real channels of ``segments``."""
    u8 = np.ascontiguousarray(packed).astype("<i4", copy=False).view(np.uint8)
    return np.unpackbits(u8, axis=-1, bitorder="little")[..., segment_positions(segments)].astype(bool)
