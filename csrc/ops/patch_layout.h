// The patch layout shared by patchify and unpatchify_axpy on every backend (math in ops/ops.h): latent
// element (c, y, x) of a [C, h, w] latent sits in token n = (y / p) * (w / p) + x / p of the token matrix
// [N, C p p], at patch-vector index (c p + y % p) p + x % p.
#pragma once

#include <cstdint>
#include <string>

#include "core/host_device.h"
#include "ops/contract.h"

namespace nfd {

NFD_HOST_DEVICE inline int64_t patch_token_offset(int64_t c, int64_t y, int64_t x, int64_t C, int64_t w,
                                                  int64_t p) {
  return ((y / p) * (w / p) + x / p) * (C * p * p) + (c * p + y % p) * p + x % p;
}

// Visits every element (c, y, x) of a [C, h, w] latent with its index in the latent and in the token matrix:
// the loop of the CPU's patchify and unpatchify_axpy.
template <typename F>
inline void for_each_patch_element(int64_t C, int64_t h, int64_t w, int64_t p, F&& f) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) f((c * h + y) * w + x, patch_token_offset(c, y, x, C, w, p));
}

namespace ops {
// The contract patchify and unpatchify_axpy share: latent [C, h, w] with h and w divisible by patch,
// tokens [(h / patch) * (w / patch), C * patch * patch], one device and dtype, apart in memory.
inline void check_patch_shapes(const Contract& c, const Tensor& latent, int patch, const Tensor& tokens) {
  c.defined({{"latent", latent}, {"tokens", tokens}});
  c.shape({"latent", latent}, {-1, -1, -1}, "C, h, w");
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  c.check(p > 0 && h % p == 0 && w % p == 0,
          "patch must be > 0 and divide the latent's h and w, got patch " + std::to_string(patch) + " for latent " +
              latent.describe());
  c.shape({"tokens", tokens}, {(h / p) * (w / p), C * p * p}, "N, C * patch * patch");
  c.float_operands({{"latent", latent}, {"tokens", tokens}});
  c.disjoint({"latent", latent}, {"tokens", tokens});
}
}  // namespace ops

}  // namespace nfd
