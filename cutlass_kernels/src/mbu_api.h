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
