// ops::patchify on the CPU (contract checked in ops/patchify.cc):
// latent[C, h, w] -> tokens[N, C*p*p]: token (r, c) row-major on the patch grid, vector order (channel, py, px).
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  if (cpu_bf16("patchify", tokens)) {
    const bf16_t* z = latent.ptr<bf16_t>();
    bf16_t* t = tokens.ptr<bf16_t>();
    for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { t[k] = z[l]; });
    return;
  }
  const float* z = latent.ptr<float>();
  float* t = tokens.ptr<float>();
  for_each_patch_element(C, h, w, p, [&](int64_t l, int64_t k) { t[k] = z[l]; });
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
