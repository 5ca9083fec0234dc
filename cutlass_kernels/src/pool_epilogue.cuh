// 2x2 stride-2 bit max-pool (OR of the four words) for a conv epilogue that has just packed its
// output words, so that the pooled tensor is made without reading the conv's output back.
//
// Two forms, whichever fits the caller's tile:
// - pool_or_word: any tile shape. OR `bits` (word `word` of pixel (n, y, x)) into the pooled
//   pixel (n, y / 2, x / 2) with one atomicOr; lanes holding the two horizontal neighbours
//   (lane ^ pair_lane_xor, same word) are combined first, so only the even-x lane issues it.
//   The pooled buffer must be zeroed before the conv (cudaMemsetAsync, capturable in a graph).
//   Rows and columns past 2 * (h / 2), 2 * (w / 2) are dropped, as the reference pool does.
// - pool_patch_store: the tile's words are staged in shared memory as a 2D patch of whole
//   pixels (even origin, even size): one thread per pooled (pixel, word) ORs four staged words
//   and stores, no atomics and no zeroing.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace mbu {

struct PooledMap {
  uint32_t* out;         // pooled tensor (n, h / 2, w / 2, stride) words, at the pool's first word
  int64_t pixel_stride;  // words between pooled pixels
  int h, w;              // the conv's (unpooled) output size
};

// All 32 lanes must call it (the shuffle is warp-wide); `active` masks lanes without a word.
__device__ __forceinline__ void pool_or_word(PooledMap const& pm, int64_t n, int y, int x, int word, uint32_t bits,
                                             bool active, int pair_lane_xor) {
  uint32_t other = __shfl_xor_sync(0xffffffffu, active ? bits : 0u, pair_lane_xor);
  int const ho = pm.h / 2, wo = pm.w / 2;
  if (!active || (x & 1) || y >= 2 * ho || x >= 2 * wo) return;
  uint32_t v = bits | other;
  if (v) atomicOr(pm.out + ((n * ho + y / 2) * wo + x / 2) * pm.pixel_stride + word, v);
}

// staged: patch_h x patch_w pixels, `staged_words` words apart, words [0, words) of each used;
// (n, y0, x0): the patch's first pixel in the conv output (y0, x0 even). Block-wide: every
// thread of the block calls it after a __syncthreads that follows the staging.
__device__ __forceinline__ void pool_patch_store(PooledMap const& pm, uint32_t const* staged, int staged_words,
                                                 int patch_h, int patch_w, int words, int64_t n, int y0, int x0) {
  int const ho = pm.h / 2, wo = pm.w / 2, ph = patch_h / 2, pw = patch_w / 2;
  for (int i = threadIdx.x; i < ph * pw * words; i += blockDim.x) {
    int word = i % words, p = i / words, px = p % pw, py = p / pw;
    int oy = y0 / 2 + py, ox = x0 / 2 + px;
    if (oy >= ho || ox >= wo) continue;
    uint32_t const* s = staged + ((2 * py) * patch_w + 2 * px) * staged_words + word;
    uint32_t v = s[0] | s[staged_words] | s[patch_w * staged_words] | s[(patch_w + 1) * staged_words];
    pm.out[((n * ho + oy) * wo + ox) * pm.pixel_stride + word] = v;
  }
}

}  // namespace mbu
