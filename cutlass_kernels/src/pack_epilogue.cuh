// The threshold-and-pack epilogue shared by the fused conv kernels (bconv.cuh) and the
// unfused int32 path (bitops.cu): raw popcount sums -> one bit per channel, 32 per word.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "mbu_api.h"

namespace mbu {

inline int check_args(MbuConvArgs const& a) {
  if (a.planes != 1 && a.planes != 2) return MBU_ERR_BAD_ARGUMENT;
  if (a.c_bits % 32 || a.n < 1 || a.h < 1 || a.w < 1 || a.out_words < 1) return MBU_ERR_BAD_ARGUMENT;
  if (a.k_cols != 32 * a.planes * a.out_words * (a.scatter ? 4 : 1)) return MBU_ERR_BAD_ARGUMENT;
  if (a.scatter && (a.r != 1 || a.s != 1 || a.pad != 0)) return MBU_ERR_BAD_ARGUMENT;
  return 0;
}

// Where the packed word `word` of GEMM row `m` goes (see MbuConvArgs::scatter).
struct OutputMap {
  uint32_t* out;
  int64_t pixel_stride;
  int word_offset, out_words, scatter, h, w;

  __device__ uint32_t* at(int64_t m, int word) const {
    if (!scatter) return out + m * pixel_stride + word_offset + word;
    int d = word / out_words, chunk = word - d * out_words;
    int64_t hw = int64_t(h) * w, n = m / hw;
    int rem = int(m - n * hw), i = rem / w, j = rem - i * w;
    int64_t pixel = (n * 2 * h + 2 * i + (d >> 1)) * (2 * int64_t(w)) + 2 * j + (d & 1);
    return out + pixel * pixel_stride + word_offset + chunk;
  }
};

// The raw count r -> bit rule of MbuConvArgs, shared by the fused and the unfused epilogue.
struct Epilogue {
  int32_t const* thr;
  int32_t const* row_count;
  int planes, alpha;
};

// One warp turns up to 32 rows of staged accumulators (row stride `ld`, first plane at `acc`,
// second 32 columns further) into packed words: lane l decides channel 32 * word + l, and the
// ballot packs the 32 channels LSB-first.
__device__ inline void threshold_pack_rows(int32_t const* acc, int64_t ld, int rows, int64_t m0, int word,
                                           Epilogue const& ep, OutputMap const& om, int lane) {
  int2 t = reinterpret_cast<int2 const*>(ep.thr)[word * 32 + lane];
  // one coalesced load of the rows' window counts; row i's is shuffled from lane i below
  int count = ep.planes == 1 && ep.row_count && lane < rows ? ep.row_count[m0 + lane] : 0;
  uint32_t mine = 0;
#pragma unroll 8
  for (int i = 0; i < 32; ++i) {
    if (i < rows) {
      int32_t const* row = acc + i * ld;
      int r = ep.alpha * row[lane] - (ep.planes == 2 ? row[32 + lane] : __shfl_sync(0xffffffffu, count, i));
      uint32_t bits = __ballot_sync(0xffffffffu, t.y * r >= t.x);
      if (lane == i) mine = bits;
    }
  }
  if (lane < rows) *om.at(m0 + lane, word) = mine;
}

}  // namespace mbu
