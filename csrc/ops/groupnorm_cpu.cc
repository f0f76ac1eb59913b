// GroupNorm of one image [C, H, W] (+ SiLU); group statistics in double.
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
               bool silu, Tensor& out) {
  expect("groupnorm", "x", x, {-1, -1, -1});
  const int64_t C = x.dim(0), HW = x.dim(1) * x.dim(2);
  NFD_CHECK(groups > 0 && C % groups == 0, invalid_argument, "ops::groupnorm: groups must divide the channels");
  expect("groupnorm", "gamma", gamma, {C});
  expect("groupnorm", "beta", beta, {C});
  expect("groupnorm", "out", out, x.shape);
  const int64_t cpg = C / groups, n = cpg * HW;
  const float* xs = x.ptr<float>();
  const float *ga = gamma.ptr<float>(), *be = beta.ptr<float>();
  float* o = out.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, groups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const auto [m, rstd] = norm_stats(xs + g * n, n, eps);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c)
        for (int64_t i = c * HW; i < (c + 1) * HW; ++i) {
          float v = (xs[i] - m) * rstd * ga[c] + be[c];
          o[i] = silu ? v / (1.f + std::exp(-v)) : v;
        }
    }
  }, ::nfd::cpu::grain_for(4 * n));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
