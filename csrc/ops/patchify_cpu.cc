// latent[C, h, w] -> tokens[N, C*p*p]: token (r, c) row-major on the patch grid, vector order (channel, py, px).
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  expect("patchify", "latent", latent, {-1, -1, -1});
  const int64_t C = latent.dim(0), h = latent.dim(1), w = latent.dim(2), p = patch;
  NFD_CHECK(p > 0 && h % p == 0 && w % p == 0, invalid_argument, "ops::patchify: patch must divide the latent");
  const int64_t rows = h / p, cols = w / p;
  expect("patchify", "tokens", tokens, {rows * cols, C * p * p});
  const float* z = latent.ptr<float>();
  float* t = tokens.ptr<float>();
  for (int64_t ch = 0; ch < C; ++ch)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) t[patch_token_offset(ch, y, x, C, w, p)] = z[(ch * h + y) * w + x];
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
