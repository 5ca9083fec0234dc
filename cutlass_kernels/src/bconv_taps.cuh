// 3x3 binary convolution with K packed across taps (issue 13): an implicit GEMM whose K axis is
// (tap, cin word) flattened, the filter's own (k_cols, 3, 3, c_bits / 32) order, so each 256-bit
// slice of mma.sync m16n8k256 holds 8 consecutive words: 4 taps x 64 channels (9 taps -> 3
// slices, 75% use) or 2 taps x 128. Words past 9 * cin_words, and pixels outside the image, are
// zero (the format's padding: activation -1 under the AND encoding). Both planes of a masked
// layer are one GEMM (N = planes x C_out, in the 32 + 32 column blocks of MbuConvArgs), and the
// threshold-and-pack epilogue of pack_epilogue.cuh writes packed bits at the graph's offset.
// First version: plain 32-bit shared-memory fragment loads, no halo tile yet (the gathered
// words come through L1/L2). sm_80 and later.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "mma_util.cuh"
#include "pack_epilogue.cuh"

namespace mbu {
namespace taps {

constexpr int kBM = 64, kBN = 64, kThreads = 128;  // 4 warps, 2 x 2, 32 x 32 each
constexpr int kKC = 32;                            // K words staged per step: 4 slices of 256 bits
constexpr int kLdK = kKC + 4;                      // row stride in words: lanes (g, tig) hit distinct banks
constexpr int kLdC = kBN + 4;

struct Smem {
  union {
    struct {
      uint32_t a[kBM * kLdK];
      uint32_t b[kBN * kLdK];
    } k;
    int32_t acc[kBM * kLdC];
  };
};

__global__ void __launch_bounds__(kThreads) bconv_taps_kernel(MbuConvArgs a, int64_t rows, Epilogue ep,
                                                              OutputMap om) {
  __shared__ Smem smem;
  int const tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int const g = lane / 4, tig = lane % 4;
  int const warp_m = warp % 2, warp_n = warp / 2;
  int const cw = a.c_bits / 32, kwords = 9 * cw;
  int64_t const m_tile = int64_t(blockIdx.x) * kBM;
  int const n_tile = blockIdx.y * kBN;
  uint32_t const* act = static_cast<uint32_t const*>(a.act);
  uint32_t const* filt = static_cast<uint32_t const*>(a.filt);
  int64_t const hw = int64_t(a.h) * a.w;

  int32_t acc[2][4][4] = {};
  for (int k0 = 0; k0 < kwords; k0 += kKC) {
    // A: row r of the tile, K word k0 + kk -> (tap, word) of pixel (i + kh - 1, j + kw - 1)
    for (int idx = tid; idx < kBM * kKC; idx += kThreads) {
      int r = idx / kKC, kk = idx % kKC, k = k0 + kk;
      int64_t m = m_tile + r;
      uint32_t v = 0;
      if (m < rows && k < kwords) {
        int tap = k / cw, word = k - tap * cw;
        int64_t n = m / hw;
        int rem = int(m - n * hw), i = rem / a.w + tap / 3 - 1, j = rem % a.w + tap % 3 - 1;
        if (i >= 0 && i < a.h && j >= 0 && j < a.w) v = __ldg(act + ((n * a.h + i) * a.w + j) * cw + word);
      }
      smem.k.a[r * kLdK + kk] = v;
    }
    for (int idx = tid; idx < kBN * kKC; idx += kThreads) {
      int c = idx / kKC, kk = idx % kKC, k = k0 + kk;
      uint32_t v = 0;
      if (n_tile + c < a.k_cols && k < kwords) v = __ldg(filt + int64_t(n_tile + c) * kwords + k);
      smem.k.b[c * kLdK + kk] = v;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kKC / 8; ++ks) {
      if (k0 + ks * 8 >= kwords) break;  // the last step's unused slices are all zero: skip them
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        uint32_t const* p = smem.k.a + (warp_m * 32 + mi * 16 + g) * kLdK + ks * 8 + tig;
        af[mi][0] = p[0], af[mi][1] = p[8 * kLdK], af[mi][2] = p[4], af[mi][3] = p[8 * kLdK + 4];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t const* p = smem.k.b + (warp_n * 32 + j * 8 + g) * kLdK + ks * 8 + tig;
        bf[j][0] = p[0], bf[j][1] = p[4];
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_b1_and(acc[mi][j], af[mi], bf[j][0], bf[j][1]);
    }
    __syncthreads();
  }

  // Stage the accumulators (row, column) through shared memory, then pack 32 rows per warp.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int r = warp_m * 32 + mi * 16 + g + (e >> 1) * 8, c = warp_n * 32 + j * 8 + 2 * tig + (e & 1);
        smem.acc[r * kLdC + c] = acc[mi][j][e];
      }
  __syncthreads();
  int const cols_per_word = 32 * ep.planes, tile_words = kBN / cols_per_word;
  int const words_total = a.k_cols / cols_per_word;
  for (int item = warp; item < tile_words * (kBM / 32); item += kThreads / 32) {
    int gw = item / (kBM / 32), slab = item % (kBM / 32);
    int word = blockIdx.y * tile_words + gw;
    int64_t m0 = m_tile + slab * 32;
    if (word >= words_total || m0 >= rows) continue;
    int nrows = rows - m0 < 32 ? int(rows - m0) : 32;
    threshold_pack_rows(smem.acc + slab * 32 * kLdC + gw * cols_per_word, kLdC, nrows, m0, word, ep, om, lane);
  }
}

inline int check(MbuConvArgs const& a) {
  if (int err = check_args(a)) return err;
  if (a.r != 3 || a.s != 3 || a.pad != 1 || a.scatter) return MBU_ERR_CANNOT_IMPLEMENT;
  return 0;
}

inline int run(MbuConvArgs const& a, cudaStream_t stream) {
  if (int err = check(a)) return err;
  int64_t const rows = int64_t(a.n) * a.h * a.w;
  dim3 grid(unsigned((rows + kBM - 1) / kBM), unsigned((a.k_cols + kBN - 1) / kBN));
  Epilogue ep{a.thr, a.row_count, a.planes, a.alpha};
  OutputMap om{a.out, a.out_pixel_stride, a.out_word_offset, a.out_words, a.scatter, a.h, a.w};
  bconv_taps_kernel<<<grid, kThreads, 0, stream>>>(a, rows, ep, om);
  return cudaGetLastError();
}

}  // namespace taps
}  // namespace mbu
