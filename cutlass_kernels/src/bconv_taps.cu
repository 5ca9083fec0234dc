// C entry of the K-packed 3x3 binary convolution (bconv_taps.cuh); not yet in the kernel table.
#include "bconv_taps.cuh"

MBU_EXPORT int mbu_bconv_taps(MbuConvArgs const* args, void* stream) {
  if (args == nullptr) return MBU_ERR_BAD_ARGUMENT;
  return mbu::taps::run(*args, static_cast<cudaStream_t>(stream));
}
