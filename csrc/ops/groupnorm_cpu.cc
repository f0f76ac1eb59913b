// ops::groupnorm on the CPU (contract checked in ops/groupnorm.cc): GroupNorm of one image [C, H, W] (+ SiLU); group
// statistics by norm_stats, then one vectorised pass per
// channel (the VAE applies SiLU to nearly every activation, so this loop is hot).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// out[i] = x[i] * scale + shift, then SiLU when `with_silu`.
NFD_CPU_MULTIVERSION
static void scale_shift(const float* x, float* out, int64_t n, float scale, float shift, bool with_silu) {
  if (with_silu) {
    for (int64_t i = 0; i < n; ++i) out[i] = silu(x[i] * scale + shift);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale + shift;
  }
}

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
               bool silu, Tensor& out) {
  fp32_only("groupnorm", out);
  const int64_t C = x.dim(0), HW = x.dim(1) * x.dim(2);
  const int64_t cpg = C / groups, n = cpg * HW;
  const float* xs = x.ptr<float>();
  const float *ga = gamma.ptr<float>(), *be = beta.ptr<float>();
  float* o = out.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, groups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const auto [m, rstd] = norm_stats(xs + g * n, n, eps);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const float scale = rstd * ga[c], shift = be[c] - m * scale;
        scale_shift(xs + c * HW, o + c * HW, HW, scale, shift, silu);
      }
    }
  }, ::nfd::cpu::grain_for(4 * n));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
