// C entries of the K-packed 3x3 binary convolution (bconv_taps.cuh), AND encoding, sm_80+.
#include "bconv_taps.cuh"

MBU_EXPORT int mbu_bconv_taps(MbuConvArgs const* args, void* stream) {
  if (args == nullptr) return MBU_ERR_BAD_ARGUMENT;
  return mbu::taps::run(*args, false, static_cast<cudaStream_t>(stream));
}

MBU_EXPORT int mbu_bconv_taps_counted(MbuConvArgs const* args, void* stream) {
  if (args == nullptr) return MBU_ERR_BAD_ARGUMENT;
  return mbu::taps::run(*args, true, static_cast<cudaStream_t>(stream));
}
