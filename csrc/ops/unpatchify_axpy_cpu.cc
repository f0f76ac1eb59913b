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
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  if (cpu_bf16("unpatchify_axpy", latent)) {
    const bf16_t* t = tokens.ptr<bf16_t>();
    bf16_t* z = latent.ptr<bf16_t>();
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) {
      z[l] = from_float<bf16_t>(to_float(z[l]) + dt * to_float(t[k]));
    });
    return;
  }
  const float* t = tokens.ptr<float>();
  float* z = latent.ptr<float>();
  for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { z[l] += dt * t[k]; });
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
