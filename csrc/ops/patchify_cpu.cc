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
  fp32_only("patchify", tokens);
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  const float* z = latent.ptr<float>();
  float* t = tokens.ptr<float>();
  for (int64_t ch = 0; ch < C; ++ch)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) t[patch_token_offset(ch, y, x, C, w, p)] = z[(ch * h + y) * w + x];
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
