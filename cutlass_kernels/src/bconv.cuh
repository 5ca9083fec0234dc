// Binary convolution on tensor cores: CUTLASS's implicit-GEMM mainloop (the kernel type that
// cutlass_library emits, see generate.py) with a threshold-and-pack epilogue that writes one bit
// per output channel, so the int32 accumulators never reach device memory.
#pragma once
#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
#include "cutlass/arch/memory_sm80.h"
#include "cutlass/conv/conv2d_problem_size.h"
#include "cutlass/conv/device/implicit_gemm_convolution.h"
#include "cutlass/conv/kernel/default_conv2d_fprop.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "pack_epilogue.cuh"

namespace mbu {

inline cutlass::conv::Conv2dProblemSize problem_of(MbuConvArgs const& a) {
  int p = a.h + 2 * a.pad - a.r + 1, q = a.w + 2 * a.pad - a.s + 1;
  return cutlass::conv::Conv2dProblemSize(a.n, a.h, a.w, a.c_bits, a.k_cols, a.r, a.s, p, q, a.pad, a.pad, 1, 1,
                                          1, 1, cutlass::conv::Mode::kCrossCorrelation, 1, 1);
}

template <typename Base>
struct FusedBinaryConv {
  using Mma = typename Base::Mma;
  using Swizzle = typename Base::ThreadblockSwizzle;
  using Shape = typename Mma::Shape;
  using WarpCount = typename Mma::WarpCount;
  using WarpShape = typename Mma::Operator::Shape;
  static int const kThreads = 32 * WarpCount::kCount;
  static int const kLd = Shape::kN + 4;      // staged row stride in int32; the pad spreads banks
  static_assert(WarpCount::kK == 1, "the epilogue assumes no split of K across warps");
  static_assert(Shape::kN % 64 == 0, "a column tile must hold whole (plane 1, plane 2) blocks of 32 channels");
  static int const kSlabs = Shape::kM / 32;
  static_assert(Shape::kM % 32 == 0, "rows are packed 32 at a time");

  union SharedStorage {
    typename Mma::SharedStorage main_loop;
    int32_t acc[Shape::kM * kLd];
  };

  struct Params {
    cutlass::conv::Conv2dProblemSize problem;
    cutlass::gemm::GemmCoord grid_tiled_shape;
    int swizzle_log_tile, gemm_k_iterations, gemm_k_iterations_per_channel;
    int64_t rows;  // N * P * Q
    typename Mma::IteratorA::Params iterator_A;
    typename Mma::IteratorB::Params iterator_B;
    typename Mma::IteratorA::Element const* ptr_A;
    typename Mma::IteratorB::Element const* ptr_B;
    Epilogue ep;
    OutputMap om;
  };

  static __device__ void run(Params const& params, SharedStorage& smem) {
    Swizzle swizzle;
    cutlass::gemm::GemmCoord tile = swizzle.get_tile_offset(params.swizzle_log_tile);
    if (params.grid_tiled_shape.m() <= tile.m() || params.grid_tiled_shape.n() <= tile.n()) return;

    int thread_idx = threadIdx.x;
    typename Mma::IteratorA iterator_A(params.iterator_A, params.problem, params.ptr_A, thread_idx,
                                       cutlass::MatrixCoord(tile.m() * Shape::kM, tile.k() * Shape::kK));
    typename Mma::IteratorB iterator_B(params.iterator_B, params.problem, params.ptr_B, thread_idx,
                                       cutlass::MatrixCoord(tile.k() * Shape::kK, tile.n() * Shape::kN));
    int warp_idx = cutlass::canonical_warp_idx_sync();
    int lane = threadIdx.x % 32;

    Mma mma(smem.main_loop, thread_idx, warp_idx, lane);
    typename Mma::FragmentC accum;
    accum.clear();
    mma(params.gemm_k_iterations, accum, iterator_A, iterator_B, accum, params.gemm_k_iterations_per_channel);

    // Stage the accumulators through shared memory (the mainloop's buffers are free now).
    cutlass::arch::cp_async_wait<0>();
    __syncthreads();
    int warp_m = warp_idx % WarpCount::kM, warp_n = warp_idx / WarpCount::kM;
    typename Mma::Operator::IteratorC it_c({smem.acc, cutlass::layout::RowMajor(kLd)}, lane);
    it_c.add_tile_offset({warp_m, warp_n});
    it_c.store(accum);
    __syncthreads();

    // Pack: work items are (word of the tile, 32-row slab), spread over the warps.
    int const cols_per_word = 32 * params.ep.planes;
    int const tile_words = Shape::kN / cols_per_word;
    int const words_total = params.problem.K / cols_per_word;
    int64_t const m_tile = int64_t(tile.m()) * Shape::kM;
    for (int item = warp_idx; item < tile_words * kSlabs; item += WarpCount::kCount) {
      int g = item / kSlabs, slab = item % kSlabs;
      int word = tile.n() * tile_words + g;
      int64_t m0 = m_tile + slab * 32;
      if (word >= words_total || m0 >= params.rows) continue;
      int rows = params.rows - m0 < 32 ? int(params.rows - m0) : 32;
      threshold_pack_rows(smem.acc + slab * 32 * kLd + g * cols_per_word, kLd, rows, m0, word, params.ep, params.om,
                          lane);
    }
  }
};

template <typename Op>
__global__ void __launch_bounds__(Op::kThreads) fused_kernel(typename Op::Params params) {
  extern __shared__ int4 smem_raw[];
  Op::run(params, *reinterpret_cast<typename Op::SharedStorage*>(smem_raw));
}

template <typename Base>
int check(MbuConvArgs const& a) {
  using Mma = typename Base::Mma;
  if (int err = check_args(a)) return err;
  auto problem = problem_of(a);
  if (Mma::IteratorA::can_implement(problem) != cutlass::Status::kSuccess ||
      Mma::IteratorB::can_implement(problem) != cutlass::Status::kSuccess)
    return MBU_ERR_CANNOT_IMPLEMENT;
  return 0;
}

template <typename Base>
int launch_fused(MbuConvArgs const& a, cudaStream_t stream) {
  using Op = FusedBinaryConv<Base>;
  using Shape = typename Op::Shape;
  auto problem = problem_of(a);
  typename Op::Params p;
  p.problem = problem;
  auto gemm = cutlass::conv::implicit_gemm_problem_size(cutlass::conv::Operator::kFprop, problem);
  typename Op::Swizzle swizzle;
  p.grid_tiled_shape = swizzle.get_tiled_shape(gemm, {Shape::kM, Shape::kN, Shape::kK}, 1);
  p.swizzle_log_tile = swizzle.get_log_tile(p.grid_tiled_shape);
  auto const algo = Op::Mma::IteratorA::kIteratorAlgorithm;
  p.gemm_k_iterations = cutlass::conv::implicit_gemm_k_iterations(
      cutlass::conv::Operator::kFprop, Shape::kK, problem, algo, cutlass::conv::GroupMode::kNone, Shape::kN);
  p.gemm_k_iterations_per_channel =
      cutlass::conv::implicit_gemm_k_iterations_per_channel(cutlass::conv::Operator::kFprop, problem, algo);
  p.rows = int64_t(problem.N) * problem.P * problem.Q;
  auto layout_a = cutlass::layout::TensorNHWC::packed({a.n, a.h, a.w, a.c_bits});
  auto layout_b = cutlass::layout::TensorNHWC::packed({a.k_cols, a.r, a.s, a.c_bits});
  p.iterator_A = Op::Mma::IteratorA::getParams(problem, layout_a);
  p.iterator_B = typename Op::Mma::IteratorB::Params(problem, layout_b);
  p.ptr_A = static_cast<typename Op::Mma::IteratorA::Element const*>(a.act);
  p.ptr_B = static_cast<typename Op::Mma::IteratorB::Element const*>(a.filt);
  p.ep = Epilogue{a.thr, a.row_count, a.planes, a.alpha};
  p.om = OutputMap{a.out, a.out_pixel_stride, a.out_word_offset, a.out_words, a.scatter, a.h, a.w};

  dim3 grid = swizzle.get_grid_shape(p.grid_tiled_shape);
  int smem = int(sizeof(typename Op::SharedStorage));
  // set once (it must not happen inside a CUDA graph capture, which the warm-up run precedes)
  static cudaError_t const attr =
      smem >= (48 << 10) ? cudaFuncSetAttribute(fused_kernel<Op>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem)
                         : cudaSuccess;
  if (attr != cudaSuccess) return attr;
  fused_kernel<Op><<<grid, Op::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

// CUTLASS's NHWC layout multiplies the batch index by a 32-bit stride, so a large batch is run
// in chunks whose activations stay under 2^31 bits (one launch each; offsets here are 64-bit).
template <typename Base>
int run_fused(MbuConvArgs const& a, cudaStream_t stream) {
  if (int err = check<Base>(a)) return err;
  int64_t const limit = (int64_t(1) << 31) - 1, per_image = int64_t(a.h) * a.w * a.c_bits;
  if (per_image > limit) return MBU_ERR_CANNOT_IMPLEMENT;
  int64_t const out_pixels = int64_t(a.h + 2 * a.pad - a.r + 1) * (a.w + 2 * a.pad - a.s + 1);
  int const chunk = int(limit / per_image < a.n ? limit / per_image : a.n);
  for (int n0 = 0; n0 < a.n; n0 += chunk) {
    MbuConvArgs sub = a;
    sub.n = a.n - n0 < chunk ? a.n - n0 : chunk;
    sub.act = static_cast<uint32_t const*>(a.act) + n0 * (per_image / 32);
    sub.out = a.out + n0 * out_pixels * (a.scatter ? 4 : 1) * a.out_pixel_stride;
    if (a.row_count) sub.row_count = a.row_count + n0 * out_pixels;
    if (int err = launch_fused<Base>(sub, stream)) return err;
  }
  return 0;
}

// CUTLASS's own kernel with its int32 epilogue: (n, p, q, k_cols) accumulators. The reference
// that the fused epilogue is checked against, and the unfused timing baseline.
template <typename Base>
int run_int32(MbuConvArgs const& a, int32_t* acc, cudaStream_t stream) {
  using Device = cutlass::conv::device::ImplicitGemmConvolution<Base>;
  if (int err = check_args(a)) return err;
  auto problem = problem_of(a);
  using ElementA = typename Device::ElementA;
  using ElementB = typename Device::ElementB;
  typename Device::Arguments args(
      problem,
      {static_cast<ElementA*>(const_cast<void*>(a.act)), cutlass::layout::TensorNHWC::packed({a.n, a.h, a.w, a.c_bits})},
      {static_cast<ElementB*>(const_cast<void*>(a.filt)),
       cutlass::layout::TensorNHWC::packed({a.k_cols, a.r, a.s, a.c_bits})},
      {acc, cutlass::layout::TensorNHWC::packed({a.n, problem.P, problem.Q, a.k_cols})},
      {acc, cutlass::layout::TensorNHWC::packed({a.n, problem.P, problem.Q, a.k_cols})}, {1, 0});
  Device op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return MBU_ERR_CANNOT_IMPLEMENT;
  if (op.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return MBU_ERR_CANNOT_IMPLEMENT;
  cutlass::Status s = op(stream);
  if (s != cutlass::Status::kSuccess) {
    cudaError_t e = cudaGetLastError();
    return e != cudaSuccess ? int(e) : MBU_ERR_CANNOT_IMPLEMENT;
  }
  return cudaGetLastError();
}

}  // namespace mbu
