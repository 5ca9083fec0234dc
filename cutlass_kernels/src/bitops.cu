// The hand-written pieces around the CUTLASS convs: the unfused threshold-and-pack, the bit
// max-pool, the window popcount that the binary AND form subtracts, the float first layer
// (conv + folded batch-norm + sign + pack) and the final 1x1 conv from bits to logits.
// Layouts are those of docs/format.md; entry points are declared in mbu_api.h's style.
#include <cuda_runtime.h>
#include <stdint.h>

#include "pack_epilogue.cuh"

namespace {

constexpr int kThreads = 256;

int launch_status() { return int(cudaGetLastError()); }

int blocks_for(int64_t n, int per_block = kThreads) { return int((n + per_block - 1) / per_block); }

// Unfused epilogue: (rows, k_cols) int32 accumulators from CUTLASS -> packed bits. One warp per
// (word, 32-row slab), as in the fused kernel.
__global__ void threshold_pack_kernel(int32_t const* acc, int64_t rows, int k_cols, int words_total,
                                      mbu::Epilogue ep, mbu::OutputMap om) {
  int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  int64_t slabs = (rows + 31) / 32;
  if (item >= slabs * words_total) return;
  int word = int(item % words_total);
  int64_t m0 = (item / words_total) * 32;
  int n_rows = rows - m0 < 32 ? int(rows - m0) : 32;
  mbu::threshold_pack_rows(acc + m0 * k_cols + int64_t(word) * 32 * ep.planes, k_cols, n_rows, m0, word, ep, om,
                           lane);
}

// 2x2 stride-2 max-pool on +-1 bits: the OR of four words. The input may be a slice of a wider
// (concatenation) buffer: `stride` words per pixel, starting at word `offset`.
__global__ void max_pool_kernel(uint32_t const* in, int64_t stride, int offset, int n, int h, int w, int words,
                                uint32_t* out) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int ho = h / 2, wo = w / 2;
  if (i >= int64_t(n) * ho * wo * words) return;
  int c = int(i % words);
  int64_t pix = i / words;
  int x = int(pix % wo), y = int((pix / wo) % ho);
  int64_t b = pix / (int64_t(wo) * ho);
  uint32_t const* p = in + ((b * h + 2 * y) * w + 2 * x) * stride + offset + c;
  out[i] = p[0] | p[stride] | p[int64_t(w) * stride] | p[(int64_t(w) + 1) * stride];
}

// Number of +1 inputs in each output pixel's k x k window (k = 3 with -1 padding, or 1): the
// popc(a' & m) term of the binary AND form (padding-channel bits are 0, so all words count).
__global__ void window_count_kernel(uint32_t const* in, int n, int h, int w, int words, int k, int32_t* out) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(n) * h * w) return;
  int x = int(i % w), y = int((i / w) % h);
  int64_t b = i / (int64_t(w) * h);
  int r = k / 2, total = 0;
  for (int yy = max(y - r, 0); yy <= min(y + r, h - 1); ++yy)
    for (int xx = max(x - r, 0); xx <= min(x + r, w - 1); ++xx) {
      uint32_t const* p = in + ((b * h + yy) * w + xx) * words;
      for (int j = 0; j < words; ++j) total += __popc(__ldg(p + j));
    }
  out[i] = total;
}

// First layer: float 3x3 conv (padding `pad_value`), y = z * scale + shift, bit = y >= 0. One
// thread per output pixel keeps its CIN x 3 x 3 inputs in registers; weights (cout_pad, CIN, 3, 3)
// sit in shared memory, rows padded to 16 bytes so that the broadcast reads are 128-bit wide.
// Padding output channels come with scale 0, shift -1 (bit 0).
template <int CIN>
__global__ void first_conv_kernel(float const* x, int n, int h, int w, float pad_value, float const* weight,
                                  float const* scale, float const* shift, int out_words, uint32_t* out) {
  constexpr int kTaps = CIN * 9, kRow = (kTaps + 3) / 4 * 4;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  int cout_pad = out_words * 32;
  float* s_scale = smem + cout_pad * kRow;
  float* s_shift = s_scale + cout_pad;
  for (int i = threadIdx.x; i < cout_pad * kRow; i += blockDim.x) {
    int t = i % kRow;
    smem[i] = t < kTaps ? weight[(i / kRow) * kTaps + t] : 0.f;
  }
  for (int i = threadIdx.x; i < cout_pad; i += blockDim.x) {
    s_scale[i] = scale[i];
    s_shift[i] = shift[i];
  }
  __syncthreads();
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(n) * h * w) return;
  int px = int(i % w), py = int((i / w) % h);
  int64_t b = i / (int64_t(w) * h);
  float v[kRow];
#pragma unroll
  for (int t = 0; t < kRow; ++t) {
    int c = t / 9, yy = py + (t / 3) % 3 - 1, xx = px + t % 3 - 1;
    bool inside = t < kTaps && yy >= 0 && yy < h && xx >= 0 && xx < w;
    v[t] = inside ? __ldg(x + ((b * CIN + c) * h + yy) * w + xx) : (t < kTaps ? pad_value : 0.f);
  }
  for (int word = 0; word < out_words; ++word) {
    uint32_t bits = 0;
#pragma unroll 4
    for (int o = 0; o < 32; ++o) {
      int oc = word * 32 + o;
      float4 const* wt = reinterpret_cast<float4 const*>(smem + oc * kRow);
      float z = 0.f;
#pragma unroll
      for (int q = 0; q < kRow / 4; ++q) {  // in (c, ky, kx) order, as the float reference sums
        float4 wq = wt[q];
        z = fmaf(v[4 * q], wq.x, z);
        z = fmaf(v[4 * q + 1], wq.y, z);
        z = fmaf(v[4 * q + 2], wq.z, z);
        z = fmaf(v[4 * q + 3], wq.w, z);
      }
      if (fmaf(z, s_scale[oc], s_shift[oc]) >= 0.f) bits |= 1u << o;
    }
    out[i * out_words + word] = bits;
  }
}

template <int CIN>
int launch_first_conv(float const* x, int n, int h, int w, float pad_value, float const* weight, float const* scale,
                      float const* shift, int out_words, uint32_t* out, cudaStream_t stream) {
  int smem = int(sizeof(float)) * out_words * 32 * ((CIN * 9 + 3) / 4 * 4 + 2);
  if (smem > (48 << 10)) return MBU_ERR_BAD_ARGUMENT;
  first_conv_kernel<CIN><<<blocks_for(int64_t(n) * h * w), kThreads, smem, stream>>>(x, n, h, w, pad_value, weight,
                                                                                      scale, shift, out_words, out);
  return launch_status();
}

// Final 1x1 conv: logits[k] = bias[k] + sum_c weight[k, c] * (2 a'_c - 1), written NCHW.
__global__ void final_conv_kernel(uint32_t const* in, int64_t stride, int n, int h, int w, int words,
                                  float const* weight, float const* bias, int classes, float* out) {
  extern __shared__ float s_w[];
  for (int j = threadIdx.x; j < classes * words * 32; j += blockDim.x) s_w[j] = weight[j];
  __syncthreads();
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t hw = int64_t(h) * w;
  if (i >= n * hw) return;
  int64_t b = i / hw, pix = i % hw;
  uint32_t const* a = in + i * stride;
  for (int k = 0; k < classes; ++k) {
    float const* wk = s_w + k * words * 32;
    float acc = 0.f;
    for (int c = 0; c < words; ++c) {
      uint32_t v = a[c];
      for (int j = 0; j < 32; ++j) acc += (v >> j & 1u) ? wk[c * 32 + j] : -wk[c * 32 + j];
    }
    out[(b * classes + k) * hw + pix] = acc + bias[k];
  }
}

}  // namespace

MBU_EXPORT int mbu_threshold_pack(MbuConvArgs const* a, int32_t const* acc, void* stream) {
  if (int err = mbu::check_args(*a)) return err;
  int p = a->h + 2 * a->pad - a->r + 1, q = a->w + 2 * a->pad - a->s + 1;
  int64_t rows = int64_t(a->n) * p * q;
  int words_total = a->k_cols / (32 * a->planes);
  int64_t warps = (rows + 31) / 32 * words_total;
  mbu::Epilogue ep{a->thr, a->row_count, a->planes, a->alpha};
  mbu::OutputMap om{a->out, a->out_pixel_stride, a->out_word_offset, a->out_words, a->scatter, a->h, a->w};
  threshold_pack_kernel<<<blocks_for(warps * 32), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      acc, rows, a->k_cols, words_total, ep, om);
  return launch_status();
}

MBU_EXPORT int mbu_max_pool(uint32_t const* in, int64_t stride, int offset, int n, int h, int w, int words,
                            uint32_t* out, void* stream) {
  if (h % 2 || w % 2) return MBU_ERR_BAD_ARGUMENT;
  int64_t total = int64_t(n) * (h / 2) * (w / 2) * words;
  if (total == 0) return 0;
  max_pool_kernel<<<blocks_for(total), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(in, stride, offset, n, h,
                                                                                           w, words, out);
  return launch_status();
}

MBU_EXPORT int mbu_window_count(uint32_t const* in, int n, int h, int w, int words, int k, int32_t* out,
                                void* stream) {
  if (k != 1 && k != 3) return MBU_ERR_BAD_ARGUMENT;
  window_count_kernel<<<blocks_for(int64_t(n) * h * w), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      in, n, h, w, words, k, out);
  return launch_status();
}

MBU_EXPORT int mbu_first_conv(float const* x, int n, int cin, int h, int w, float pad_value, float const* weight,
                              float const* scale, float const* shift, int out_words, uint32_t* out, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (cin) {  // the image channels: grey, RGB, RGBA
    case 1: return launch_first_conv<1>(x, n, h, w, pad_value, weight, scale, shift, out_words, out, st);
    case 3: return launch_first_conv<3>(x, n, h, w, pad_value, weight, scale, shift, out_words, out, st);
    case 4: return launch_first_conv<4>(x, n, h, w, pad_value, weight, scale, shift, out_words, out, st);
    default: return MBU_ERR_BAD_ARGUMENT;
  }
}

MBU_EXPORT int mbu_final_conv(uint32_t const* in, int64_t stride, int n, int h, int w, int words,
                              float const* weight, float const* bias, int classes, float* out, void* stream) {
  int smem = int(sizeof(float)) * classes * words * 32;
  if (smem > (48 << 10)) return MBU_ERR_BAD_ARGUMENT;
  final_conv_kernel<<<blocks_for(int64_t(n) * h * w), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      in, stride, n, h, w, words, weight, bias, classes, out);
  return launch_status();
}
