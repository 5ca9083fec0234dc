// The C interface of the MBU-Net CUDA kernels. Python mirrors these structs with ctypes
// (lightning_mbu/ops/cuda.py); keep both in step. Every entry point returns 0 on success,
// a cudaError_t, or one of the MBU_ERR_* codes below, and takes the stream as a raw handle.
#pragma once
#include <stdint.h>

#if defined(_WIN32)
#define MBU_EXPORT extern "C" __declspec(dllexport)
#else
#define MBU_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#define MBU_ERR_CANNOT_IMPLEMENT 1001  // CUTLASS rejects the problem (alignment, channels)
#define MBU_ERR_BAD_ARGUMENT 1002

// A binary convolution as an implicit GEMM with a threshold-and-pack epilogue.
// Activations: (n, h, w, c_bits / 32) int32 words, channel c in bit c % 32 of word c / 32.
// Filter: (k_cols, r, s, c_bits / 32) words. With planes = 2 the columns come in blocks of 64:
// 32 columns of the first plane then 32 of the second for the same 32 output channels, and the
// epilogue forms r = alpha * acc[first] - acc[second]; with planes = 1 each column is one
// channel and r = alpha * acc - row_count[m] (row_count may be null: 0). Then per channel
// bit = (d * r >= dthr), from the (dthr, d) int pairs in thr.
// scatter = 0: output pixel m (NPQ order) goes to out + m * out_pixel_stride + out_word_offset.
// scatter = 1 (2x2 stride-2 transposed conv, r = s = 1, pad = 0): word block d = word / out_words
// of the columns is sub-position (d / 2, d % 2) of the 2x upsampled output, whose pixels are
// (n, 2 * h, 2 * w) with out_pixel_stride words each.
typedef struct {
  int n, h, w, c_bits;
  int k_cols;
  int r, s, pad;
  int planes, alpha;
  const int32_t* row_count;  // per GEMM row (output pixel before any scatter), or null
  const void* act;
  const void* filt;
  const int32_t* thr;  // (d * thr, d) pairs, one per GEMM output channel (words of all sub-positions)
  uint32_t* out;
  int64_t out_pixel_stride;  // words between output pixels (a concat buffer is wider than the conv)
  int out_word_offset;       // first word of this conv's channels within an output pixel
  int out_words;             // packed words of real output per pixel (per sub-position if scatter)
  int scatter;
} MbuConvArgs;

// Hand-written stage kernels (first_conv.cu, tconv.cu, pool.cu).
// The 2x2 stride-2 transposed conv (scatter = 1) as one b1 GEMM, AND encoding, sm_80+.
MBU_EXPORT int mbu_tconv(MbuConvArgs const* a, void* stream);
// The float first layer on FP16 tensor cores; x: NCHW float32 (x_half = 0) or float16 (x_half = 1).
MBU_EXPORT int mbu_first_conv_tc(void const* x, int x_half, int n, int cin, int h, int w, float pad_value,
                                 float const* weight, float const* scale, float const* shift, int out_words,
                                 uint32_t* out, void* stream);
// 2x2 bit max-pool of a slice (`offset`, `words` of `stride` words per pixel) with vector loads.
MBU_EXPORT int mbu_max_pool_vec(uint32_t const* in, int64_t stride, int offset, int n, int h, int w, int words,
                                uint32_t* out, void* stream);

// The 3x3 binary conv (r = s = 3, pad = 1, scatter = 0) with K packed across taps, both planes in
// one GEMM (bconv_taps.cu), AND encoding, sm_80+. mbu_bconv_taps_counted: planes = 1 with the
// window count popc(a' & m) formed in the kernel (row_count must be null).
MBU_EXPORT int mbu_bconv_taps(MbuConvArgs const* a, void* stream);
MBU_EXPORT int mbu_bconv_taps_counted(MbuConvArgs const* a, void* stream);
