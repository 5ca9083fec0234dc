// The 2x2 stride-2 binary transposed conv as one GEMM on b1 tensor cores (mma.sync m16n8k256
// AND-popc, sm_80+), both bit-planes of a masked layer in the same GEMM, thresholded and packed
// in registers and written straight into the concatenation buffer.
//
// GEMM: rows = input pixels (N*H*W), K = input channel bits (zero-padded to 256), columns = the
// filter rows of MbuConvArgs (scatter = 1): sub-position d = 2 kh + kw major, then output word,
// then (planes = 2) 32 columns of the first plane and 32 of the second, or (planes = 1) 32.
// A block owns the columns of one kh and WB consecutive output words for both kw, so that each
// input pixel's two output pixels (2j, 2j + 1) of row 2i + kh get all of the block's words from
// one thread, one after the other. The block keeps its filter slice (BN columns x K) in shared
// memory and streams input tiles (BM rows x K) through a 3-stage cp.async pipeline, looping
// over row tiles with a grid stride so that the blocks of all column slices walk the input
// together (each input tile is read from DRAM about once).
#include <cuda_runtime.h>
#include <stdint.h>

#include "launch_util.h"
#include "mbu_api.h"
#include "mma_util.cuh"
#include "pack_epilogue.cuh"

namespace {

constexpr int kThreads = 256, kWarps = 8, kStages = 3;

struct TConvParams {
  uint32_t const* act;
  uint32_t const* filt;
  int2 const* thr;
  int32_t const* row_count;
  uint32_t* out;
  int64_t pixel_stride;
  int64_t rows;
  int h, w;
  int cin_words, ksteps, kw_pad, chunks;  // kw_pad words per shared row (chunks = kw_pad / 4)
  int wpd;                                // output words per sub-position
  int alpha, groups, m_tiles;
  int reps;  // row blocks of 32 x warps_m per tile: small K takes several, to amortise each tile's syncs
  bool pair_store;  // 8-byte output stores are aligned
};

template <int PLANES, int WB>
struct Shape {
  static constexpr int kColsPerWord = 32 * PLANES;
  static constexpr int kBN = 2 * WB * kColsPerWord;  // both kw
  static constexpr int kWarpsN = kBN / 64;           // a warp owns 64 columns: one kw
  static constexpr int kWarpsM = kWarps / kWarpsN;
  static constexpr int kBM = 32 * kWarpsM;  // a warp owns 32 rows: two m16 tiles
  static constexpr int kWordsPerWarp = 64 / kColsPerWord;
  static_assert(kWarpsN * kWarpsM == kWarps && kWarpsN % 2 == 0, "warps must split evenly over kw");

  static size_t smem_bytes(int kw_pad, int reps) {
    return size_t(kBN + kStages * kBM * reps) * kw_pad * 4 + size_t(2 * WB * 32) * sizeof(int2) +
           size_t(kBM * reps) * 2 * WB * 4;
  }
};

// Copy the cin_words words of `rows` rows into a swizzled tile (rows past rows_total: zeros);
// the K padding up to ksteps * 8 words is zeroed once (zero_k_padding) and never copied.
template <int VEC>
__device__ __forceinline__ void load_rows(uint32_t* tile, uint32_t const* base, int64_t first_row, int rows,
                                          int64_t rows_total, TConvParams const& p, int tid) {
  constexpr int kWordsPerCopy = VEC / 4;
  int const copies_per_row = (p.cin_words + kWordsPerCopy - 1) / kWordsPerCopy;
  for (int i = tid; i < rows * copies_per_row; i += kThreads) {
    int r = i / copies_per_row, word = (i - r * copies_per_row) * kWordsPerCopy;
    int64_t g = first_row + r;
    bool valid = g < rows_total;
    uint32_t const* src = valid ? base + g * p.cin_words + word : base;
    int chunk = mbu::swizzle(r, word / 4, p.chunks);
    mbu::cp_async<VEC>(tile + r * p.kw_pad + chunk * 4 + word % 4, src, valid);
  }
}

__device__ __forceinline__ void zero_k_padding(uint32_t* tiles, int rows, TConvParams const& p, int tid) {
  int const pad = p.ksteps * 8 - p.cin_words;
  for (int i = tid; i < rows * pad; i += kThreads) {
    int r = i / pad, word = p.cin_words + i % pad;
    tiles[r * p.kw_pad + mbu::swizzle(r % 8, word / 4, p.chunks) * 4 + word % 4] = 0;
  }
}

template <int PLANES, int WB, int VEC>
__global__ void __launch_bounds__(kThreads, 2) tconv_kernel(TConvParams p) {
  using S = Shape<PLANES, WB>;
  int const bm = S::kBM * p.reps;  // rows per tile
  extern __shared__ int4 smem_raw[];
  uint32_t* b_s = reinterpret_cast<uint32_t*>(smem_raw);
  uint32_t* a_s = b_s + S::kBN * p.kw_pad;
  int2* thr_s = reinterpret_cast<int2*>(a_s + kStages * bm * p.kw_pad);
  uint32_t* out_s = reinterpret_cast<uint32_t*>(thr_s + 2 * WB * 32);  // [bm][2 kw][WB]

  int const tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int const g = lane / 4, tig = lane % 4;
  int const kh = blockIdx.x / p.groups, w0 = (blockIdx.x % p.groups) * WB;

  // The block's filter slice: local column lc -> (kw, word, column within the word).
  {
    int const copies_per_row = p.ksteps * 8 / (VEC / 4);
    for (int i = tid; i < S::kBN * copies_per_row; i += kThreads) {
      int lc = i / copies_per_row, word = (i - lc * copies_per_row) * (VEC / 4);
      int kw = lc / (S::kBN / 2), rest = lc % (S::kBN / 2);
      int ow = w0 + rest / S::kColsPerWord, within = rest % S::kColsPerWord;
      bool valid = ow < p.wpd && word < p.cin_words;
      int64_t frow = (int64_t((kh * 2 + kw) * p.wpd + ow)) * S::kColsPerWord + within;
      uint32_t const* src = valid ? p.filt + frow * p.cin_words + word : p.filt;
      mbu::cp_async<VEC>(b_s + lc * p.kw_pad + mbu::swizzle(lc, word / 4, p.chunks) * 4 + word % 4, src, valid);
    }
    for (int i = tid; i < 2 * WB * 32; i += kThreads) {  // thresholds of local channel (kw, word, ch)
      int kw = i / (WB * 32), ow = w0 + (i % (WB * 32)) / 32, ch = i % 32;
      thr_s[i] = ow < p.wpd ? p.thr[((kh * 2 + kw) * p.wpd + ow) * 32 + ch] : make_int2(0, 0);
    }
    zero_k_padding(a_s, kStages * bm, p, tid);
  }

  int const warp_n = warp % S::kWarpsN, warp_m = warp / S::kWarpsN;
  int const kw_of_warp = warp_n / (S::kWarpsN / 2);
  int const q0 = (warp_n % (S::kWarpsN / 2)) * S::kWordsPerWarp;  // first word of the warp (in the block)

  auto tile_of = [&](int i) { return int(blockIdx.y) + i * int(gridDim.y); };
  auto load_tile = [&](int i) {
    int t = tile_of(i);
    if (t < p.m_tiles) load_rows<VEC>(a_s + (i % kStages) * bm * p.kw_pad, p.act, int64_t(t) * bm, bm, p.rows, p, tid);
    mbu::cp_async_commit();  // an empty group keeps the wait count uniform
  };
  for (int s = 0; s < kStages - 1; ++s) load_tile(s);
  __syncthreads();  // thresholds
  // this lane's thresholds (channel j * 8 + 2 tig + e of the warp's words): in registers where they
  // fit under the 128-register cap of two blocks per SM (one word per warp), else read from shared
  int2 const* my_thr = thr_s + kw_of_warp * WB * 32 + q0 * 32 + 2 * tig;
  int2 thr[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) thr[j][e] = my_thr[j * 8 + e];

  int const nw = p.wpd - w0 < WB ? p.wpd - w0 : WB;
  int64_t const hw = int64_t(p.h) * p.w;
  for (int i = 0; tile_of(i) < p.m_tiles; ++i) {
    mbu::cp_async_wait<kStages - 2>();
    __syncthreads();
    load_tile(i + kStages - 1);
    int64_t const m0 = int64_t(tile_of(i)) * bm;

    for (int rep = 0; rep < p.reps; ++rep) {
      int const row0 = rep * S::kBM + warp_m * 32;  // the warp's first row in the tile
      uint32_t const* a_tile = a_s + (i % kStages) * bm * p.kw_pad;
      int32_t acc[2][8][4] = {};
      for (int ks = 0; ks < p.ksteps; ++ks) {
        uint32_t a[2][4], b[8][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          int mat = lane >> 3, row = row0 + mi * 16 + (mat & 1) * 8 + (lane & 7);
          mbu::ldmatrix_x4(a[mi], a_tile + row * p.kw_pad + mbu::swizzle(row, ks * 2 + (mat >> 1), p.chunks) * 4);
        }
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          int mat = lane >> 3, col = warp_n * 64 + (2 * jp + (mat >> 1)) * 8 + (lane & 7);
          uint32_t r[4];
          mbu::ldmatrix_x4(r, b_s + col * p.kw_pad + mbu::swizzle(col, ks * 2 + (mat & 1), p.chunks) * 4);
          b[2 * jp][0] = r[0], b[2 * jp][1] = r[1], b[2 * jp + 1][0] = r[2], b[2 * jp + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int j = 0; j < 8; ++j) mbu::mma_b1_and(acc[mi][j], a[mi], b[j][0], b[j][1]);
      }

      // Epilogue: threshold in the accumulator layout, OR the quad's bits into whole words, and
      // stage them as [row][kw][word] for the pixel-ordered stores below.
      uint32_t words[2][2][S::kWordsPerWarp];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          int64_t m = m0 + row0 + mi * 16 + half * 8 + g;
          int count = 0;
          if (PLANES == 1 && p.row_count != nullptr && m < p.rows) count = __ldg(p.row_count + m);
#pragma unroll
          for (int q = 0; q < S::kWordsPerWarp; ++q) {
            uint32_t bits = 0;
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                int r = PLANES == 2 ? p.alpha * acc[mi][j][half * 2 + e] - acc[mi][j + 4][half * 2 + e]
                                    : p.alpha * acc[mi][q * 4 + j][half * 2 + e] - count;
                int2 t = S::kWordsPerWarp == 1 ? thr[j][e] : my_thr[q * 32 + j * 8 + e];
                bits |= uint32_t(t.y * r >= t.x) << (j * 8 + 2 * tig + e);
              }
            words[mi][half][q] = mbu::quad_or(bits);
          }
        }
      // lane tig of each quad stages row (mi, half) = (tig / 2, tig % 2)
      int const srow = row0 + (tig >> 1) * 16 + (tig & 1) * 8 + g;
#pragma unroll
      for (int q = 0; q < S::kWordsPerWarp; ++q) {
        uint32_t v = tig == 0 ? words[0][0][q] : tig == 1 ? words[0][1][q] : tig == 2 ? words[1][0][q] : words[1][1][q];
        out_s[(srow * 2 + kw_of_warp) * WB + q0 + q] = v;
      }
    }
    __syncthreads();

    // Stores: item (row, kw) -> output pixel (n, 2i + kh, 2j + kw), the block's words in order.
    for (int it = tid; it < bm * 2; it += kThreads) {
      int row = it >> 1, kw = it & 1;
      int64_t m = m0 + row;
      if (m >= p.rows) continue;
      int64_t n = m / hw;
      int rem = int(m - n * hw), y = rem / p.w, x = rem - y * p.w;
      int64_t pixel = (n * 2 * p.h + 2 * y + kh) * (2 * int64_t(p.w)) + 2 * x + kw;
      uint32_t* dst = p.out + pixel * p.pixel_stride + w0;
      uint32_t const* src = out_s + (row * 2 + kw) * WB;
      if (WB == 2 && nw == 2 && p.pair_store) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(src[0], src[1]);
      } else {
        for (int q = 0; q < nw; ++q) dst[q] = src[q];
      }
    }
  }
  mbu::cp_async_wait<0>();  // no copy may outlive the block
}

template <int PLANES, int WB, int VEC>
int launch(MbuConvArgs const& a, TConvParams p, cudaStream_t stream) {
  using S = Shape<PLANES, WB>;
  auto kernel = tconv_kernel<PLANES, WB, VEC>;
  // small K: several row blocks per tile (the A tile stays small), so syncs and stores amortise
  p.reps = p.ksteps >= 4 ? 1 : p.ksteps >= 2 ? 2 : 4;
  size_t smem = S::smem_bytes(p.kw_pad, p.reps);
  int resident = 0;
  if (int err = mbu::resident_blocks(kernel, kThreads, smem, resident)) return err;
  if (resident < 1) return MBU_ERR_CANNOT_IMPLEMENT;
  int const bm = S::kBM * p.reps;
  p.m_tiles = int((p.rows + bm - 1) / bm);
  int const n_tiles = 2 * p.groups;
  int const want = (resident + n_tiles - 1) / n_tiles;  // one wave of resident blocks
  dim3 grid(n_tiles, want < p.m_tiles ? want : p.m_tiles);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace

MBU_EXPORT int mbu_tconv(MbuConvArgs const* a, void* stream) {
  if (int err = mbu::check_args(*a)) return err;
  if (!a->scatter || a->r != 1 || a->s != 1 || a->pad != 0) return MBU_ERR_BAD_ARGUMENT;
  int64_t rows = int64_t(a->n) * a->h * a->w;
  if (rows >= (int64_t(1) << 31) * 64) return MBU_ERR_CANNOT_IMPLEMENT;  // tile index is an int
  TConvParams p{};
  p.act = static_cast<uint32_t const*>(a->act);
  p.filt = static_cast<uint32_t const*>(a->filt);
  p.thr = reinterpret_cast<int2 const*>(a->thr);
  p.row_count = a->row_count;
  p.out = a->out;
  p.pixel_stride = a->out_pixel_stride;
  p.out += a->out_word_offset;
  p.rows = rows;
  p.h = a->h, p.w = a->w;
  p.cin_words = a->c_bits / 32;
  p.ksteps = (p.cin_words + 7) / 8;
  p.kw_pad = p.ksteps * 8;
  if (p.kw_pad / 4 > 4 && (p.kw_pad / 4) % 8) p.kw_pad = (p.kw_pad + 31) / 32 * 32;  // swizzle needs 2, 4 or 8k chunks
  p.chunks = p.kw_pad / 4;
  p.wpd = a->out_words;
  p.alpha = a->alpha;
  constexpr int kWB = 2;
  p.groups = (p.wpd + kWB - 1) / kWB;
  p.pair_store = p.pixel_stride % 2 == 0 && (reinterpret_cast<uintptr_t>(p.out) % 8) == 0;
  auto st = static_cast<cudaStream_t>(stream);
  bool vec16 = p.cin_words % 4 == 0 && (reinterpret_cast<uintptr_t>(p.act) % 16) == 0 &&
               (reinterpret_cast<uintptr_t>(p.filt) % 16) == 0;
  if (a->planes == 2)
    return vec16 ? launch<2, kWB, 16>(*a, p, st) : launch<2, kWB, 4>(*a, p, st);
  return vec16 ? launch<1, kWB, 16>(*a, p, st) : launch<1, kWB, 4>(*a, p, st);
}
