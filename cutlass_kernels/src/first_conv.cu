// The float first layer on FP16 tensor cores (mma.sync m16n8k16, f32 accumulators, sm_80+):
// 3x3 conv of the NCHW image (padding `pad_value`), folded batch-norm y = z * scale + shift,
// bit = y >= 0, packed 32 channels per word, NHWC.
//
// Precision: float32 operands are split into fp16 pairs, v = hi + lo, and the kernel sums
// x_hi w_lo + x_lo w_hi + x_hi w_hi (the lo terms first), about 22 significant bits per product:
// near the float32 reference, so only outputs within ~1e-6 of the threshold can flip. fp16
// images are exact (x_lo = 0: two products). Inputs must lie in the fp16 range (|x| < 65504).
//
// Work split: a block loops over tiles of 256 output pixels (NHW order, grid stride). Each thread
// gathers its pixel's CIN x 3 x 3 window (coalesced across the warp, neighbours' loads hit L1),
// splits it and writes one im2col row (K padded to 16s) to shared memory; each warp then runs
// 32 pixels x all channels on the tensor cores from ldmatrix fragments and packs the signs in
// registers (a quad of lanes holds 8 channels of a row: OR across it gives the word).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launch_util.h"
#include "mbu_api.h"
#include "mma_util.cuh"

namespace {

constexpr int kThreads = 256, kTile = 256;

template <int CIN>
struct Taps {
  static constexpr int kTaps = CIN * 9;
  static constexpr int kSteps = (kTaps + 15) / 16;          // k16 mma steps
  static constexpr int kChunks = kSteps * 2 <= 4 ? kSteps * 2 : 8;  // 16-byte chunks per shared row (swizzle: 2, 4, 8)
  static constexpr int kRow = kChunks * 8;                   // halves per shared row
  static_assert(kSteps * 2 <= 8, "first conv supports up to 7 input channels");
};

struct FirstParams {
  void const* x;
  int n, h, w;
  float pad_value;
  float const* weight;  // (cout_pad, CIN, 3, 3)
  float const* scale;
  float const* shift;
  int out_words;
  uint32_t* out;
  int64_t pixels;
  int tiles;
};

__device__ __forceinline__ float load_value(float const* x, int64_t i) { return __ldg(x + i); }
__device__ __forceinline__ float load_value(__half const* x, int64_t i) { return __half2float(x[i]); }

__device__ __forceinline__ void split(float v, __half& hi, __half& lo) {
  hi = __float2half_rn(v);
  lo = __float2half_rn(v - __half2float(hi));
}

template <typename T, int CIN>
__global__ void __launch_bounds__(kThreads, 2) first_conv_tc_kernel(FirstParams p) {
  using K = Taps<CIN>;
  constexpr bool kSplitX = sizeof(T) == 4;
  constexpr int kParts = kSplitX ? 2 : 1;  // x_hi (and x_lo)
  int const cout_pad = p.out_words * 32;
  extern __shared__ int4 smem_raw[];
  __half* a_s = reinterpret_cast<__half*>(smem_raw);        // [kParts][kTile][kRow]
  __half* b_s = a_s + kParts * kTile * K::kRow;              // [2 (hi, lo)][cout_pad][kRow]
  float* s_scale = reinterpret_cast<float*>(b_s + 2 * cout_pad * K::kRow);
  float* s_shift = s_scale + cout_pad;

  int const tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, tig = lane % 4;
  for (int i = tid; i < cout_pad * K::kRow; i += kThreads) {
    int ch = i / K::kRow, t = i % K::kRow;
    float v = t < K::kTaps ? p.weight[ch * K::kTaps + t] : 0.f;
    __half hi, lo;
    split(v, hi, lo);
    int at = ch * K::kRow + mbu::swizzle(ch, t / 8, K::kChunks) * 8 + t % 8;
    b_s[at] = hi;
    b_s[cout_pad * K::kRow + at] = lo;
  }
  for (int i = tid; i < cout_pad; i += kThreads) s_scale[i] = p.scale[i], s_shift[i] = p.shift[i];

  T const* x = static_cast<T const*>(p.x);
  int64_t const hw = int64_t(p.h) * p.w;
  for (int tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    // im2col row of this thread's pixel, K in (c, ky, kx) order as the weights are laid out
    int64_t const pix = int64_t(tile) * kTile + tid;
    bool const real = pix < p.pixels;
    int64_t const b = real ? pix / hw : 0;
    int const rem = int(pix - b * hw), py = rem / p.w, px = rem - py * p.w;
    __half hi[K::kSteps * 16], lo[K::kSteps * 16];
#pragma unroll
    for (int t = 0; t < K::kSteps * 16; ++t) {
      float v = 0.f;
      if (t < K::kTaps && real) {
        int c = t / 9, yy = py + (t / 3) % 3 - 1, xx = px + t % 3 - 1;
        bool inside = yy >= 0 && yy < p.h && xx >= 0 && xx < p.w;
        v = inside ? load_value(x, ((b * CIN + c) * p.h + yy) * p.w + xx) : p.pad_value;
      }
      if constexpr (kSplitX) {
        split(v, hi[t], lo[t]);
      } else {
        hi[t] = __float2half_rn(v);  // exact: v came from a half (or is pad_value)
        lo[t] = __float2half_rn(0.f);
      }
    }
    __syncthreads();  // the previous tile's fragments are read
    // pack the halves two by two into 16-byte chunks
#pragma unroll
    for (int part = 0; part < kParts; ++part)
#pragma unroll
      for (int c = 0; c < K::kSteps * 2; ++c) {
        __half const* src = (part ? lo : hi) + c * 8;
        __half2 h01 = __halves2half2(src[0], src[1]), h23 = __halves2half2(src[2], src[3]);
        __half2 h45 = __halves2half2(src[4], src[5]), h67 = __halves2half2(src[6], src[7]);
        uint4 v = make_uint4(*reinterpret_cast<uint32_t*>(&h01), *reinterpret_cast<uint32_t*>(&h23),
                             *reinterpret_cast<uint32_t*>(&h45), *reinterpret_cast<uint32_t*>(&h67));
        *reinterpret_cast<uint4*>(a_s + (part * kTile + tid) * K::kRow + mbu::swizzle(tid, c, K::kChunks) * 8) = v;
      }
    __syncthreads();

    uint32_t a[kParts][2][K::kSteps][4];
#pragma unroll
    for (int part = 0; part < kParts; ++part)
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ks = 0; ks < K::kSteps; ++ks) {
          int mat = lane >> 3, row = warp * 32 + mi * 16 + (mat & 1) * 8 + (lane & 7);
          mbu::ldmatrix_x4(a[part][mi][ks],
                           a_s + (part * kTile + row) * K::kRow + mbu::swizzle(row, ks * 2 + (mat >> 1), K::kChunks) * 8);
        }

    for (int word = 0; word < p.out_words; ++word) {
      float acc[2][4][4] = {};
      uint32_t bh[K::kSteps][4][2], bl[K::kSteps][4][2];
#pragma unroll
      for (int ks = 0; ks < K::kSteps; ++ks)
#pragma unroll
        for (int jp = 0; jp < 2; ++jp) {
          int mat = lane >> 3, ch = word * 32 + (2 * jp + (mat >> 1)) * 8 + (lane & 7);
          int at = ch * K::kRow + mbu::swizzle(ch, ks * 2 + (mat & 1), K::kChunks) * 8;
          uint32_t r[4];
          mbu::ldmatrix_x4(r, b_s + at);
          bh[ks][2 * jp][0] = r[0], bh[ks][2 * jp][1] = r[1], bh[ks][2 * jp + 1][0] = r[2], bh[ks][2 * jp + 1][1] = r[3];
          mbu::ldmatrix_x4(r, b_s + cout_pad * K::kRow + at);
          bl[ks][2 * jp][0] = r[0], bl[ks][2 * jp][1] = r[1], bl[ks][2 * jp + 1][0] = r[2], bl[ks][2 * jp + 1][1] = r[3];
        }
      // small terms first, then x_hi w_hi
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int ks = 0; ks < K::kSteps; ++ks) {
            mbu::mma_f16(acc[mi][j], a[0][mi][ks], bl[ks][j][0], bl[ks][j][1]);
            if constexpr (kSplitX) mbu::mma_f16(acc[mi][j], a[kParts - 1][mi][ks], bh[ks][j][0], bh[ks][j][1]);
          }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int ks = 0; ks < K::kSteps; ++ks) mbu::mma_f16(acc[mi][j], a[0][mi][ks], bh[ks][j][0], bh[ks][j][1]);

      // y = z * scale + shift (two roundings, as the reference), bit = y >= 0
      uint32_t words[2][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          uint32_t bits = 0;
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              int ch = j * 8 + 2 * tig + e, oc = word * 32 + ch;
              float y = __fadd_rn(__fmul_rn(acc[mi][j][half * 2 + e], s_scale[oc]), s_shift[oc]);
              bits |= uint32_t(y >= 0.f) << ch;
            }
          words[mi][half] = mbu::quad_or(bits);
        }
      // lane tig of each quad writes row (mi, half) = (tig / 2, tig % 2)
      uint32_t v = tig == 0 ? words[0][0] : tig == 1 ? words[0][1] : tig == 2 ? words[1][0] : words[1][1];
      int64_t row_pix = int64_t(tile) * kTile + warp * 32 + (tig >> 1) * 16 + (tig & 1) * 8 + g;
      if (row_pix < p.pixels) p.out[row_pix * p.out_words + word] = v;
    }
  }
}

template <typename T, int CIN>
int launch(FirstParams p, cudaStream_t stream) {
  using K = Taps<CIN>;
  constexpr int kParts = sizeof(T) == 4 ? 2 : 1;
  auto kernel = first_conv_tc_kernel<T, CIN>;
  int const cout_pad = p.out_words * 32;
  size_t smem = size_t(kParts * kTile + 2 * cout_pad) * K::kRow * sizeof(__half) + 2 * cout_pad * sizeof(float);
  int resident = 0;
  if (int err = mbu::resident_blocks(kernel, kThreads, smem, resident)) return err;
  if (resident < 1) return MBU_ERR_CANNOT_IMPLEMENT;
  p.tiles = int((p.pixels + kTile - 1) / kTile);
  int grid = resident < p.tiles ? resident : p.tiles;
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return int(cudaGetLastError());
}

template <typename T>
int dispatch(FirstParams const& p, int cin, cudaStream_t stream) {
  switch (cin) {  // the image channels: grey, RGB, RGBA
    case 1: return launch<T, 1>(p, stream);
    case 3: return launch<T, 3>(p, stream);
    case 4: return launch<T, 4>(p, stream);
    default: return MBU_ERR_BAD_ARGUMENT;
  }
}

}  // namespace

MBU_EXPORT int mbu_first_conv_tc(void const* x, int x_half, int n, int cin, int h, int w, float pad_value,
                                 float const* weight, float const* scale, float const* shift, int out_words,
                                 uint32_t* out, void* stream) {
  if (n < 1 || h < 1 || w < 1 || out_words < 1) return MBU_ERR_BAD_ARGUMENT;
  int64_t pixels = int64_t(n) * h * w;
  if ((pixels + kTile - 1) / kTile >= (int64_t(1) << 31)) return MBU_ERR_CANNOT_IMPLEMENT;
  // fp16 images run without the x_lo term, so the padding value must be exact in fp16 too
  if (x_half && __half2float(__float2half_rn(pad_value)) != pad_value) return MBU_ERR_BAD_ARGUMENT;
  FirstParams p{x, n, h, w, pad_value, weight, scale, shift, out_words, out, pixels, 0};
  auto st = static_cast<cudaStream_t>(stream);
  return x_half ? dispatch<__half>(p, cin, st) : dispatch<float>(p, cin, st);
}
