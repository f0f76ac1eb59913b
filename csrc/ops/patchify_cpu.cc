// latent[C, h, w] -> tokens[N, C*p*p]: token (r, c) row-major on the patch grid, vector order (channel, py, px).
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

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
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t py = 0; py < p; ++py)
          for (int64_t px = 0; px < p; ++px)
            t[(r * cols + c) * C * p * p + (ch * p + py) * p + px] = z[(ch * h + r * p + py) * w + c * p + px];
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
