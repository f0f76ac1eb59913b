// The index map of ops::resize_bilinear, host and device (PyTorch's upsample_bilinear2d with align_corners false
// and sizes given: scale = in / out as float, source = max(scale * (d + 0.5) - 0.5, 0), lower index its floor, the
// upper one index + 1 (the lower again at the last row or column), weights 1 - lambda and lambda).
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace ops {
namespace tile {

struct Lerp {
  int i0, i1;
  float w0, w1;
};
NFD_HOST_DEVICE inline Lerp bilinear_source(int d, int in, int out) {
  const float scale = float(in) / float(out);
#ifdef __CUDA_ARCH__
  // Rounded twice, as on the host: nvcc would contract this into one FMA and move lambda by up to 3e-5.
  float src = __fsub_rn(__fmul_rn(scale, float(d) + 0.5f), 0.5f);
#else
  float src = scale * (float(d) + 0.5f) - 0.5f;
#endif
  src = src < 0.f ? 0.f : src;
  int i0 = int(src);
  if (i0 > in - 1) i0 = in - 1;
  const int i1 = i0 < in - 1 ? i0 + 1 : i0;
  const float l1 = src - float(i0);
  return Lerp{i0, i1, 1.f - l1, l1};
}

}  // namespace tile
}  // namespace ops
}  // namespace nfd
