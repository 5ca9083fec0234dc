// Standalone 2x2 stride-2 bit max-pool with vector loads: one thread per (pooled pixel, group
// of VEC words), four 4/8/16-byte loads and one store, for pools whose conv did not pool in its
// epilogue (pool_epilogue.cuh). Same contract as mbu_max_pool in bitops.cu.
#include <cuda_runtime.h>
#include <stdint.h>

#include "mbu_api.h"

namespace {

constexpr int kThreads = 256;

template <typename V>
__device__ __forceinline__ V or4(V a, V b, V c, V d);
template <>
__device__ __forceinline__ uint32_t or4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return a | b | c | d; }
template <>
__device__ __forceinline__ uint2 or4(uint2 a, uint2 b, uint2 c, uint2 d) {
  return make_uint2(a.x | b.x | c.x | d.x, a.y | b.y | c.y | d.y);
}
template <>
__device__ __forceinline__ uint4 or4(uint4 a, uint4 b, uint4 c, uint4 d) {
  return make_uint4(a.x | b.x | c.x | d.x, a.y | b.y | c.y | d.y, a.z | b.z | c.z | d.z, a.w | b.w | c.w | d.w);
}

// `stride` and `offset` in units of V; `vecs` V per pixel.
template <typename V>
__global__ void __launch_bounds__(kThreads) pool_kernel(V const* in, int64_t stride, int n, int h, int w, int vecs,
                                                        V* out, int64_t total) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  int const ho = h / 2, wo = w / 2;
  int c = int(i % vecs);
  int64_t pix = i / vecs;
  int x = int(pix % wo), y = int((pix / wo) % ho);
  int64_t b = pix / (int64_t(wo) * ho);
  V const* p = in + ((b * h + 2 * y) * w + 2 * x) * stride + c;
  out[i] = or4(__ldg(p), __ldg(p + stride), __ldg(p + int64_t(w) * stride), __ldg(p + (int64_t(w) + 1) * stride));
}

template <typename V>
int launch(uint32_t const* in, int64_t stride, int offset, int n, int h, int w, int words, uint32_t* out,
           cudaStream_t stream) {
  constexpr int k = sizeof(V) / 4;
  int64_t total = int64_t(n) * (h / 2) * (w / 2) * (words / k);
  pool_kernel<V><<<int((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      reinterpret_cast<V const*>(in + offset), stride / k, n, h, w, words / k, reinterpret_cast<V*>(out), total);
  return int(cudaGetLastError());
}

bool aligned(void const* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

MBU_EXPORT int mbu_max_pool_vec(uint32_t const* in, int64_t stride, int offset, int n, int h, int w, int words,
                                uint32_t* out, void* stream) {
  if (h % 2 || w % 2 || n < 0 || words < 1 || stride < words) return MBU_ERR_BAD_ARGUMENT;
  if (int64_t(n) * (h / 2) * (w / 2) == 0) return 0;
  if ((int64_t(n) * (h / 2) * (w / 2) * words + kThreads - 1) / kThreads >= (int64_t(1) << 31))
    return MBU_ERR_CANNOT_IMPLEMENT;
  auto st = static_cast<cudaStream_t>(stream);
  auto fits = [&](int k) { return words % k == 0 && stride % k == 0 && offset % k == 0 && aligned(in, 4 * k) &&
                                  aligned(out, 4 * k); };
  if (fits(4)) return launch<uint4>(in, stride, offset, n, h, w, words, out, st);
  if (fits(2)) return launch<uint2>(in, stride, offset, n, h, w, words, out, st);
  return launch<uint32_t>(in, stride, offset, n, h, w, words, out, st);
}
