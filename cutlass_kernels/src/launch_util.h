// Host-side launch helpers for the hand-written persistent kernels (first_conv.cu, tconv.cu).
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

namespace mbu {

// How many blocks of `kernel` are resident on the current device at once (multiprocessors x
// blocks per multiprocessor), with `smem` dynamic shared bytes; raises the kernel's dynamic
// shared-memory limit first when needed. Cached per (device, smem), so that after the first call
// of a shape (the warm-up run) a CUDA graph capture sees no API call but cudaGetDevice and the
// launch. Returns a cudaError_t (0: success; `blocks` is 0 when not even one block fits).
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, size_t smem, int& blocks) {
  static std::mutex lock;
  static std::map<std::pair<int, size_t>, int> cache;
  static std::map<int, size_t> smem_limit;  // per device: the limit is only ever raised
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device)) return e;
  std::lock_guard<std::mutex> guard(lock);
  auto key = std::make_pair(device, smem);
  auto it = cache.find(key);
  if (it != cache.end()) {
    blocks = it->second;
    return 0;
  }
  if (smem > (48 << 10) && smem > smem_limit[device]) {
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)))
      return e;
    smem_limit[device] = smem;
  }
  int sms = 0, per_sm = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) return e;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem)) return e;
  blocks = sms * per_sm;
  cache[key] = blocks;
  return 0;
}

}  // namespace mbu
