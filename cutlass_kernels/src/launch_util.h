// Host-side launch helpers for the hand-written persistent kernels (first_conv.cu, tconv.cu).
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace mbu {

// How many blocks of `kernel` are resident on the current device at once (multiprocessors x
// blocks per multiprocessor), with `smem` dynamic shared bytes; raises the kernel's dynamic
// shared-memory limit first when needed (never lowers it). Cached per (kernel, device, smem), so
// that after the first call of a shape (the warm-up run) a CUDA graph capture sees no API call
// but cudaGetDevice and the launch. Returns a cudaError_t (0: success; `blocks` is 0 when not
// even one block fits).
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, size_t smem, int& blocks) {
  // keyed by the kernel too: kernels of one signature share this instance's statics
  static std::mutex lock;
  static std::map<std::tuple<void const*, int, size_t>, int> cache;
  static std::map<std::pair<void const*, int>, size_t> smem_limit;
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device)) return e;
  void const* fn = reinterpret_cast<void const*>(kernel);
  std::lock_guard<std::mutex> guard(lock);
  auto key = std::make_tuple(fn, device, smem);
  auto it = cache.find(key);
  if (it != cache.end()) {
    blocks = it->second;
    return 0;
  }
  size_t& limit = smem_limit[std::make_pair(fn, device)];
  if (smem > (48 << 10) && smem > limit) {
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)))
      return e;
    limit = smem;
  }
  int sms = 0, per_sm = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) return e;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem)) return e;
  blocks = sms * per_sm;
  cache[key] = blocks;
  return 0;
}

}  // namespace mbu
