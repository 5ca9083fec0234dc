// 3x3 binary convolution with K packed across taps (issue 13), mma.sync m16n8k256 .and.popc.
//
// GEMM: rows = output pixels, columns = the filter rows of MbuConvArgs (planes = 2: blocks of 32
// columns of b+ then 32 of b-, one GEMM for both planes), K = the 3x3 window's input words. The
// input words are taken in chunks of CK words (CK = cin words when they are 1, 2 or 4, else 8);
// one chunk's K is (tap, word) flattened, 9 * CK words cut into 256-bit slices of 8 words, so a
// slice holds 4 taps x 64 channels (CK = 2: 75% of the K bits used), 2 taps x 128 (90%) or one
// tap x 256 (100%). Words past the chunk's 9 taps, and past the input's words, are zero in B,
// so whatever A holds there adds nothing.
//
// Blocks are persistent: one column tile each, walking pixel tiles of TH x 16 pixels (grid
// stride). The work is a flat sequence of steps (pixel tile, chunk); each step's cp.async copies
// of the tile's (TH + 2) x 18 pixel halo (pixels outside the image are zero words: -1
// activations, the format's padding) and of the chunk's BN x 9 * CK filter words are issued while
// the step before computes (two buffers). With one chunk (cin <= 256) the filter slice is copied
// once per block and only halos stream. Every A fragment is read from the halo at the pixel + tap
// offset (ldmatrix when a tap's words fill 16 bytes, CK >= 4; 32-bit loads for CK = 1, 2), so
// the input is read from memory about once per (column tile, 1 + 2/TH).
// A warp owns 64 pixels (4 rows of 16) x 64 columns; the epilogue thresholds and packs from
// the accumulators (a quad of lanes holds a row's 32 channels) and stores the words at the
// graph's offset. For the binary AND form the window count popc(a' & m) can be formed here too
// (count_here): a popcount per halo pixel summed over the 3x3 window, so no separate pass.
// sm_80 and later.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>

#include "launch_util.h"
#include "mma_util.cuh"
#include "pack_epilogue.cuh"

namespace mbu {
namespace taps {

constexpr int kTW = 16;  // tile width in pixels: one m16 fragment = 16 pixels of one row

template <int CK>
struct Chunk {
  static constexpr int kSlices = (9 * CK + 7) / 8;
  // words per halo pixel: CK = 8 pads to 12 so ldmatrix's 8 rows (pixels) hit distinct banks
  static constexpr int kPix = CK == 8 ? 12 : CK;
  // pixels per halo row: CK = 2 reads taps (0,2) and (1,0) in one 32-bit load; a row of 26
  // pixels puts them 48 words apart, on the other half of the banks
  static constexpr int kRow = CK == 2 ? 26 : kTW + 2;
};

template <int CK, int WARPS_M, int WARPS_N>
struct Tile {
  using C = Chunk<CK>;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kBM = 64 * WARPS_M, kBN = 64 * WARPS_N, kTH = kBM / kTW;
  static constexpr int kHaloW = kTW + 2, kHaloPix = (kTH + 2) * kHaloW;
  // 3 more rows: taps 9.. of the last slice (zero in B) read there; rounded to 16 bytes
  static constexpr int kHaloWords = ((kTH + 5) * C::kRow * C::kPix + 3) / 4 * 4;
  static constexpr int kBWords = C::kSlices * kBN * 8;

  // two halo buffers, one filter buffer (one chunk: copied once) or two, the counts
  static size_t smem_bytes(int chunks) {
    return (size_t(2) * kHaloWords + size_t(chunks > 1 ? 2 : 1) * kBWords + kHaloPix + kBM) * 4;
  }
};

struct Params {
  uint32_t const* act;
  uint32_t const* filt;
  int n, h, w, cw, kwords, k_cols;
  int chunks, tiles_x, tiles_y, m_tiles, n_tiles;
  bool vec;         // cw % 4 == 0: 16-byte copies
  bool count_here;  // binary AND form: the window count popc(a' & m) is formed in the kernel
};

// cp.async copies of the halo of the pixel tile at (img, y0, x0), words [word0, word0 + CK).
template <int CK, int WM, int WN>
__device__ __forceinline__ void load_halo(uint32_t* halo, Params const& p, int img, int y0, int x0, int word0,
                                          int tid) {
  using T = Tile<CK, WM, WN>;
  using C = Chunk<CK>;
  if constexpr (CK >= 4) {
    if (p.vec) {
      constexpr int kPieces = CK / 4;
      for (int i = tid; i < T::kHaloPix * kPieces; i += T::kThreads) {
        int px = i / kPieces, piece = i - px * kPieces;
        int hy = px / T::kHaloW, hx = px - hy * T::kHaloW, y = y0 + hy - 1, x = x0 + hx - 1;
        int word = word0 + 4 * piece;
        bool ok = y >= 0 && y < p.h && x >= 0 && x < p.w && word < p.cw;
        uint32_t const* src = ok ? p.act + ((int64_t(img) * p.h + y) * p.w + x) * p.cw + word : p.act;
        cp_async<16>(halo + (hy * C::kRow + hx) * C::kPix + 4 * piece, src, ok);
      }
      return;
    }
  }
  if constexpr (CK == 2) {  // cin = 2 words: one 8-byte copy per pixel
    for (int px = tid; px < T::kHaloPix; px += T::kThreads) {
      int hy = px / T::kHaloW, hx = px - hy * T::kHaloW, y = y0 + hy - 1, x = x0 + hx - 1;
      bool ok = y >= 0 && y < p.h && x >= 0 && x < p.w;
      uint32_t const* src = ok ? p.act + ((int64_t(img) * p.h + y) * p.w + x) * 2 : p.act;
      cp_async<8>(halo + (hy * C::kRow + hx) * 2, src, ok);
    }
    return;
  }
  for (int i = tid; i < T::kHaloPix * CK; i += T::kThreads) {  // word by word
    int px = i / CK, wd = i - px * CK;
    int hy = px / T::kHaloW, hx = px - hy * T::kHaloW, y = y0 + hy - 1, x = x0 + hx - 1;
    int word = word0 + wd;
    bool ok = y >= 0 && y < p.h && x >= 0 && x < p.w && word < p.cw;
    uint32_t const* src = ok ? p.act + ((int64_t(img) * p.h + y) * p.w + x) * p.cw + word : p.act;
    cp_async<4>(halo + (hy * C::kRow + hx) * C::kPix + wd, src, ok);
  }
}

// cp.async copies of the filter words of columns [n0, n0 + BN) for chunk words [word0, word0 + CK):
// slice-major, 8 words per column and slice, the two 16-byte halves swizzled by column bit 2 so
// that ldmatrix's 8 columns hit distinct banks. K words past 9 taps or cin are zero.
template <int CK, int WM, int WN>
__device__ __forceinline__ void load_filter(uint32_t* bs, Params const& p, int n0, int word0, int tid) {
  using T = Tile<CK, WM, WN>;
  using C = Chunk<CK>;
  if constexpr (CK >= 4) {
    if (p.vec) {
      for (int i = tid; i < T::kBN * C::kSlices * 2; i += T::kThreads) {
        int c = i / (C::kSlices * 2), rest = i - c * (C::kSlices * 2), s = rest / 2, half = rest & 1;
        int k = 8 * s + 4 * half, tap = k / CK, word = word0 + k % CK;
        bool ok = tap < 9 && n0 + c < p.k_cols && word < p.cw;
        uint32_t const* src = ok ? p.filt + int64_t(n0 + c) * p.kwords + tap * p.cw + word : p.filt;
        cp_async<16>(bs + (s * T::kBN + c) * 8 + 4 * (half ^ ((c >> 2) & 1)), src, ok);
      }
      return;
    }
  }
  for (int i = tid; i < T::kBN * C::kSlices * 8; i += T::kThreads) {  // word by word
    int c = i / (C::kSlices * 8), k = i - c * (C::kSlices * 8), s = k / 8, kk = k % 8;
    int tap = k / CK, word = word0 + k % CK;
    bool ok = tap < 9 && n0 + c < p.k_cols && word < p.cw;
    uint32_t const* src = ok ? p.filt + int64_t(n0 + c) * p.kwords + tap * p.cw + word : p.filt;
    cp_async<4>(bs + (s * T::kBN + c) * 8 + 4 * ((kk / 4) ^ ((c >> 2) & 1)) + kk % 4, src, ok);
  }
}

// Halo word offset of tap t (kh = t / 3, kw = t % 3) from the window's top-left pixel.
template <int CK>
__host__ __device__ constexpr int tap_offset(int t) {
  return ((t / 3) * Chunk<CK>::kRow + t % 3) * Chunk<CK>::kPix;
}

struct TileAt {
  int img, y0, x0;
};

template <int TH>
__device__ __forceinline__ TileAt tile_at(Params const& p, int m_tile) {
  int const tx = m_tile % p.tiles_x, rest = m_tile / p.tiles_x;
  return {rest / p.tiles_y, (rest % p.tiles_y) * TH, tx * kTW};
}

// The warp's 4 x 8 m16n8k256 products of one K slice: A fragments `af` (4 m16 rows), B from shared
// memory at `b` (8 n8 columns, loaded here), accumulated into `acc`.
__device__ __forceinline__ void mma_fragments(int32_t (&acc)[4][8][4], uint32_t const (&af)[4][4], uint32_t const* b) {
  uint32_t bf[4][4];
#pragma unroll
  for (int pr = 0; pr < 4; ++pr) ldmatrix_x4(bf[pr], b + pr * 16 * 8);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int nj = 0; nj < 8; ++nj)
      mma_b1_and(acc[mi][nj], af[mi], bf[nj / 2][2 * (nj % 2)], bf[nj / 2][2 * (nj % 2) + 1]);
}

// One 256-bit K slice of the warp's 64 x 64 tile: B (4 ldmatrix, 2 n8 fragments each) and A (one
// ldmatrix per m16 fragment, rows `kRow * kPix` words apart) from lane addresses, 32 mma.
template <typename T>
__device__ __forceinline__ void mma_slice(int32_t (&acc)[4][8][4], uint32_t const* a, uint32_t const* b) {
  using C = typename T::C;
  uint32_t af[4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) ldmatrix_x4(af[mi], a + mi * C::kRow * C::kPix);
  mma_fragments(acc, af, b);
}

// The same with A from 32-bit loads (CK = 1, 2: a 16-byte row of A spans taps): row g of the
// fragment at `a`, its words 0-3 and 4-7 at the lane's tap offsets `tap[0]`, `tap[1]`.
template <typename T>
__device__ __forceinline__ void mma_slice_words(int32_t (&acc)[4][8][4], uint32_t const* a, int const (&tap)[2],
                                                uint32_t const* b) {
  using C = typename T::C;
  uint32_t af[4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
    uint32_t const* row = a + mi * C::kRow * C::kPix;
    af[mi][0] = row[tap[0]], af[mi][1] = row[tap[0] + 8 * C::kPix];
    af[mi][2] = row[tap[1]], af[mi][3] = row[tap[1] + 8 * C::kPix];
  }
  mma_fragments(acc, af, b);
}

// Threshold, pack and store one pixel tile's words. Lane (g, tig) holds rows g, g + 8 of each m16
// fragment and columns 2 tig, 2 tig + 1 of each n8 fragment. Planes = 2: the warp's 64 columns
// are one word's b+ (fragments 0-3) and b- (4-7); planes = 1: two words of 32 channels.
template <typename T>
__device__ __forceinline__ void epilogue(int32_t const (&acc)[4][8][4], Params const& p, Epilogue const& ep,
                                         OutputMap const& om, TileAt at, int n0, int warp_m, int warp_n, int g,
                                         int tig, int32_t const* wcount) {
  int const words = ep.planes == 2 ? 1 : 2;
  int const word0 = (n0 + warp_n * 64) / (32 * ep.planes);
  int2 const* thr = reinterpret_cast<int2 const*>(ep.thr);
  int2 t[2][4][2];
#pragma unroll
  for (int wi = 0; wi < 2; ++wi)
#pragma unroll
    for (int f = 0; f < 4; ++f)
#pragma unroll
      for (int b = 0; b < 2; ++b)
        t[wi][f][b] = wi < words && word0 + wi < om.out_words ? __ldg(thr + (word0 + wi) * 32 + f * 8 + 2 * tig + b)
                                                               : make_int2(0, 0);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      int const ty = warp_m * 4 + mi, tx = g + 8 * hf, y = at.y0 + ty, x = at.x0 + tx;
      bool const inside = y < p.h && x < p.w;
      int64_t const m = (int64_t(at.img) * p.h + y) * p.w + x;
      int count = 0;
      if (ep.planes == 1) {
        if (p.count_here)
          count = wcount[ty * kTW + tx];
        else if (ep.row_count && inside)
          count = ep.row_count[m];
      }
#pragma unroll
      for (int wi = 0; wi < 2; ++wi) {
        uint32_t bits = 0;
#pragma unroll
        for (int f = 0; f < 4; ++f)
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            int r = ep.planes == 2 ? ep.alpha * acc[mi][f][2 * hf + b] - acc[mi][4 + f][2 * hf + b]
                                   : ep.alpha * acc[mi][4 * wi + f][2 * hf + b] - count;
            int2 const tt = t[wi][f][b];
            bits |= uint32_t(tt.y * r >= tt.x) << (f * 8 + b);
          }
        bits = quad_or(bits << (2 * tig));
        int const word = word0 + wi;
        if (wi < words && word < om.out_words && inside && tig == (mi + 2 * hf + wi) % 4) *om.at(m, word) = bits;
      }
    }
}

template <int CK, int WM, int WN>
__global__ void __launch_bounds__(Tile<CK, WM, WN>::kThreads)
    bconv_taps_kernel(Params p, Epilogue ep, OutputMap om) {
  using T = Tile<CK, WM, WN>;
  using C = Chunk<CK>;
  extern __shared__ __align__(16) uint32_t smem[];
  int const tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int const g = lane / 4, tig = lane % 4;
  int const warp_m = warp % WM, warp_n = warp / WM;
  // the grid is a multiple of n_tiles, columns fastest: the blocks of all column tiles walk the
  // pixel tiles together and read each halo from L2
  int const n_tile = blockIdx.x % p.n_tiles, n0 = n_tile * T::kBN;
  int const m_first = blockIdx.x / p.n_tiles, m_step = gridDim.x / p.n_tiles;
  int const chunks = p.chunks;
  uint32_t* const halos = smem;                      // 2 x kHaloWords
  uint32_t* const filters = smem + 2 * T::kHaloWords;  // 1 or 2 x kBWords
  int32_t* const pcount = reinterpret_cast<int32_t*>(filters + (chunks > 1 ? 2 : 1) * T::kBWords);  // per halo pixel
  int32_t* const wcount = pcount + T::kHaloPix;                                                  // per tile pixel

  // Lane-constant parts of the fragment addresses (words from a halo / filter buffer's start).
  int const q = lane >> 3, r8 = lane & 7;
  int a_lane;                     // CK >= 4: ldmatrix row address; CK <= 2: 32-bit load of row g
  int a_tap[C::kSlices][2] = {};  // CK <= 2: per (slice, upper 4 words) the lane's tap offset
  if constexpr (CK >= 4) {
    a_lane = ((warp_m * 4) * C::kRow + r8 + 8 * (q & 1)) * C::kPix + (CK == 8 ? 4 * (q >> 1) : 0);
  } else {
    a_lane = ((warp_m * 4) * C::kRow + g) * C::kPix;
#pragma unroll
    for (int s = 0; s < C::kSlices; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        int k = 8 * s + tig + 4 * j, t = k / CK;
        a_tap[s][j] = tap_offset<CK>(t) + k % CK;  // t >= 9: inside the spare rows, zero in B
      }
  }
  int const b_lane = (warp_n * 64 + (q >> 1) * 8 + r8) * 8 + 4 * ((q & 1) ^ ((r8 >> 2) & 1));

  // steps: (pixel tile m_first + i * m_step, chunk c) for step i * chunks + c
  int const my_tiles = m_first < p.m_tiles ? (p.m_tiles - m_first + m_step - 1) / m_step : 0;
  int const steps = my_tiles * chunks;
  if (steps == 0) return;
  {
    TileAt const t0 = tile_at<T::kTH>(p, m_first);
    load_halo<CK, WM, WN>(halos, p, t0.img, t0.y0, t0.x0, 0, tid);
    load_filter<CK, WM, WN>(filters, p, n0, 0, tid);
    cp_async_commit();
  }
  int32_t acc[4][8][4];
  for (int step = 0; step < steps; ++step) {
    int const c = step % chunks, m_tile = m_first + (step / chunks) * m_step;
    TileAt const at = tile_at<T::kTH>(p, m_tile);
    cp_async_wait<0>();
    __syncthreads();  // this step's copies are visible; every thread is done with the step before
    if (step + 1 < steps) {  // the next step's copies run while this one computes
      int const c1 = (step + 1) % chunks;
      TileAt const t1 = tile_at<T::kTH>(p, m_first + ((step + 1) / chunks) * m_step);
      load_halo<CK, WM, WN>(halos + ((step + 1) & 1) * T::kHaloWords, p, t1.img, t1.y0, t1.x0, c1 * CK, tid);
      if (chunks > 1) load_filter<CK, WM, WN>(filters + ((step + 1) & 1) * T::kBWords, p, n0, c1 * CK, tid);
      cp_async_commit();
    }
    uint32_t const* halo = halos + (step & 1) * T::kHaloWords;
    uint32_t const* bs = filters + (chunks > 1 ? (step & 1) * T::kBWords : 0);
    if (c == 0) {
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int nj = 0; nj < 8; ++nj)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][nj][e] = 0;
    }
    if (p.count_here)  // popcount per halo pixel, summed over chunks (each thread keeps its pixels)
      for (int i = tid; i < T::kHaloPix; i += T::kThreads) {
        uint32_t const* px = halo + ((i / T::kHaloW) * C::kRow + i % T::kHaloW) * C::kPix;
        int n = 0;
#pragma unroll
        for (int wd = 0; wd < CK; ++wd) n += __popc(px[wd]);
        pcount[i] = (c == 0 ? 0 : pcount[i]) + n;
      }
    if constexpr (CK == 8) {  // slice = tap: one kernel row per iteration keeps the registers in bounds
#pragma unroll 1
      for (int kh = 0; kh < 3; ++kh)
#pragma unroll
        for (int kw = 0; kw < 3; ++kw)
          mma_slice<T>(acc, halo + a_lane + tap_offset<CK>(3 * kh + kw), bs + b_lane + (3 * kh + kw) * T::kBN * 8);
    } else {
#pragma unroll
      for (int s = 0; s < C::kSlices; ++s) {
        if constexpr (CK == 4) {  // matrices 0, 1 take tap 2s and matrices 2, 3 tap 2s + 1
          int off = (q >> 1) ? tap_offset<CK>(2 * s + 1) : tap_offset<CK>(2 * s);
          mma_slice<T>(acc, halo + a_lane + off, bs + b_lane + s * T::kBN * 8);
        } else {
          mma_slice_words<T>(acc, halo + a_lane, a_tap[s], bs + b_lane + s * T::kBN * 8);
        }
      }
    }
    if (c + 1 < chunks) continue;

    if (p.count_here) {  // 3x3 sums of the per-pixel counts
      __syncthreads();
      for (int i = tid; i < T::kBM; i += T::kThreads) {
        int ty = i / kTW, tx = i % kTW, n = 0;
#pragma unroll
        for (int t = 0; t < 9; ++t) n += pcount[(ty + t / 3) * T::kHaloW + tx + t % 3];
        wcount[i] = n;
      }
      __syncthreads();
    }
    epilogue<T>(acc, p, ep, om, at, n0, warp_m, warp_n, g, tig, wcount);
  }
}

inline int check(MbuConvArgs const& a) {
  if (int err = check_args(a)) return err;
  if (a.r != 3 || a.s != 3 || a.pad != 1 || a.scatter) return MBU_ERR_CANNOT_IMPLEMENT;
  return 0;
}

template <int CK, int WM, int WN>
int launch(MbuConvArgs const& a, bool count_here, cudaStream_t stream) {
  using T = Tile<CK, WM, WN>;
  Params p;
  p.act = static_cast<uint32_t const*>(a.act);
  p.filt = static_cast<uint32_t const*>(a.filt);
  p.n = a.n, p.h = a.h, p.w = a.w, p.cw = a.c_bits / 32, p.kwords = 9 * p.cw, p.k_cols = a.k_cols;
  p.chunks = (p.cw + CK - 1) / CK;
  p.tiles_x = (a.w + kTW - 1) / kTW, p.tiles_y = (a.h + T::kTH - 1) / T::kTH;
  p.n_tiles = (a.k_cols + T::kBN - 1) / T::kBN;
  int64_t const m_tiles = int64_t(a.n) * p.tiles_y * p.tiles_x;
  if (m_tiles >= (int64_t(1) << 31)) return MBU_ERR_CANNOT_IMPLEMENT;
  p.m_tiles = int(m_tiles);
  p.vec = p.cw % 4 == 0;
  p.count_here = count_here;
  size_t const smem = T::smem_bytes(p.chunks);
  auto kernel = bconv_taps_kernel<CK, WM, WN>;
  int resident = 0;  // also raises the dynamic shared-memory limit (cached, so graph capture sees none of it)
  if (int err = resident_blocks(kernel, T::kThreads, smem, resident)) return err;
  if (resident == 0) return MBU_ERR_CANNOT_IMPLEMENT;
  // one wave of persistent blocks, a multiple of the column tiles
  int64_t const per_column = std::min<int64_t>(m_tiles, std::max(1, resident / p.n_tiles));
  int64_t const blocks = per_column * p.n_tiles;
  if (blocks >= (int64_t(1) << 31)) return MBU_ERR_CANNOT_IMPLEMENT;
  Epilogue ep{a.thr, a.row_count, a.planes, a.alpha};
  OutputMap om{a.out, a.out_pixel_stride, a.out_word_offset, a.out_words, a.scatter, a.h, a.w};
  kernel<<<unsigned(blocks), T::kThreads, smem, stream>>>(p, ep, om);
  return cudaGetLastError();
}

// Tile shape: 256 pixels x 64 columns when the layer has at most 64 columns (a binary 64-channel
// layer), else 128 x 128. MBU_TAPS_TILE (a compile-time knob of scripts/bench_bconv_taps.py)
// forces one: 1 = 256 x 64, 2 = 128 x 128, 3 = 64 x 256, 4 = 256 x 128 (8 warps). Layers with
// fewer 128 x 128 tiles than multiprocessors (batch 1 at 40 x 60) leave some idle: split K next.
template <int CK>
int launch_tiles(MbuConvArgs const& a, bool count_here, cudaStream_t stream) {
#ifdef MBU_TAPS_TILE
  switch (MBU_TAPS_TILE) {
    case 1: return launch<CK, 4, 1>(a, count_here, stream);
    case 2: return launch<CK, 2, 2>(a, count_here, stream);
    case 3: return launch<CK, 1, 4>(a, count_here, stream);
    default: return launch<CK, 4, 2>(a, count_here, stream);
  }
#else
  if (a.k_cols <= 64) return launch<CK, 4, 1>(a, count_here, stream);
  return launch<CK, 2, 2>(a, count_here, stream);
#endif
}

inline int run(MbuConvArgs const& a, bool count_here, cudaStream_t stream) {
  if (int err = check(a)) return err;
  if (count_here && (a.planes != 1 || a.row_count)) return MBU_ERR_BAD_ARGUMENT;
  int const cw = a.c_bits / 32;
  if (cw == 1) return launch_tiles<1>(a, count_here, stream);
  if (cw == 2) return launch_tiles<2>(a, count_here, stream);
  if (cw <= 4) return launch_tiles<4>(a, count_here, stream);
  return launch_tiles<8>(a, count_here, stream);
}

}  // namespace taps
}  // namespace mbu
