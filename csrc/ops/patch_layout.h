// The patch layout shared by patchify and unpatchify_axpy on every backend (math in ops/ops.h): latent
// element (c, y, x) of a [C, h, w] latent sits in token n = (y / p) * (w / p) + x / p of the token matrix
// [N, C p p], at patch-vector index (c p + y % p) p + x % p.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace nfd {

NFD_HOST_DEVICE inline int64_t patch_token_offset(int64_t c, int64_t y, int64_t x, int64_t C, int64_t w,
                                                  int64_t p) {
  return ((y / p) * (w / p) + x / p) * (C * p * p) + (c * p + y % p) * p + x % p;
}

}  // namespace nfd
