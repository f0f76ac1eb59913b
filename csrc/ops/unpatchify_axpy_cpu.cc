// ops::unpatchify_axpy on the CPU (contract checked in ops/unpatchify_axpy.cc):
// latent = keep * latent + dt * unpatchify(tokens): the Euler step (keep 1) or a DDIM step (x = A x + B v) fused
// with the inverse of patchify; keep 0 writes the latent without reading it.
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent, float keep) {
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  if (cpu_bf16("unpatchify_axpy", latent)) {
    const bf16_t* t = tokens.ptr<bf16_t>();
    bf16_t* z = latent.ptr<bf16_t>();
    // keep 0 must not read the latent (it may hold anything, NaN included): 0 * NaN is NaN.
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) {
      const float kept = keep == 0.f ? 0.f : keep * to_float(z[l]);
      z[l] = from_float<bf16_t>(kept + dt * to_float(t[k]));
    });
    return;
  }
  const float* t = tokens.ptr<float>();
  float* z = latent.ptr<float>();
  if (keep == 1.f)
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { z[l] += dt * t[k]; });
  else if (keep == 0.f)
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { z[l] = dt * t[k]; });
  else
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { z[l] = keep * z[l] + dt * t[k]; });
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
