// Small PTX wrappers shared by the hand-written tensor-core kernels (first_conv.cu, tconv.cu):
// cp.async copies, ldmatrix, the b1 and f16 mma.sync atoms, and the shared-memory swizzle that
// keeps ldmatrix's eight 16-byte rows on distinct banks. sm_80 and later.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace mbu {

__device__ __forceinline__ unsigned smem_addr(void const* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// cp.async of `BYTES` (4, 8 or 16); with valid == false the destination is zero-filled and
// nothing is read (src must still be a mapped address).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, void const* src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  int n = valid ? BYTES : 0;
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(BYTES),
                 "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices (8 rows of 16 bytes each); lanes 8i..8i+7 give the row addresses of
// matrix i, and register i of lane t receives 32-bit word t % 4 of row t / 4 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], void const* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}

// d += popc(a & b) over K = 256 bits (BMMA.168256 in SASS).
__device__ __forceinline__ void mma_b1_and(int32_t (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a * b, f16 operands, f32 accumulators (HMMA.16816.F32).
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Physical 16-byte chunk of logical chunk `c` in row `row` of a tile whose rows hold `chunks`
// chunks (2, 4, or a multiple of 8): rows r..r+7 of one logical chunk land on 8 distinct
// 16-byte bank groups, so ldmatrix and 16-byte row stores are conflict-free.
__device__ __forceinline__ int swizzle(int row, int c, int chunks) {
  int s = chunks >= 8 ? (row & 7) : ((row * chunks) >> 3) & (chunks - 1);
  return c ^ s;
}

// The 32-bit word of a quad (the 4 lanes sharing an mma row) from each lane's bits: OR across it.
__device__ __forceinline__ uint32_t quad_or(uint32_t v) {
  v |= __shfl_xor_sync(0xffffffffu, v, 1);
  v |= __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

}  // namespace mbu
