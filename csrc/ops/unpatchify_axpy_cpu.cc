// ops::unpatchify_axpy on the CPU (contract checked in ops/unpatchify_axpy.cc):
// latent += dt * unpatchify(tokens): the Euler step fused with the inverse of patchify.
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent) {
  fp32_only("unpatchify_axpy", latent);
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  const float* t = tokens.ptr<float>();
  float* z = latent.ptr<float>();
  for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { z[l] += dt * t[k]; });
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
