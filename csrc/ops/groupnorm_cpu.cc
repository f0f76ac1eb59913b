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
template <typename T>
NFD_CPU_INLINE void scale_shift_n(const T* x, T* out, int64_t n, float scale, float shift, bool with_silu) {
  if (with_silu) {
    for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(silu(to_float(x[i]) * scale + shift));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(to_float(x[i]) * scale + shift);
  }
}
NFD_CPU_MULTIVERSION
static void scale_shift(const float* x, float* out, int64_t n, float scale, float shift, bool with_silu) {
  scale_shift_n(x, out, n, scale, shift, with_silu);
}
NFD_CPU_MULTIVERSION
static void scale_shift(const bf16_t* x, bf16_t* out, int64_t n, float scale, float shift, bool with_silu) {
  scale_shift_n(x, out, n, scale, shift, with_silu);
}

// Statistics and the affine map in fp32 for bf16 images too, rounded once.
template <typename T>
static void groupnorm_groups(const Context& ctx, const T* xs, const T* ga, const T* be, int groups, float eps,
                             bool silu, T* o, int64_t C, int64_t HW) {
  const int64_t cpg = C / groups, n = cpg * HW;
  ::nfd::cpu::parallel_for(ctx.threads, groups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const auto [m, rstd] = norm_stats(xs + g * n, n, eps);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const float scale = rstd * to_float(ga[c]), shift = to_float(be[c]) - m * scale;
        scale_shift(xs + c * HW, o + c * HW, HW, scale, shift, silu);
      }
    }
  }, ::nfd::cpu::grain_for(4 * n));
}

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
               bool silu, Tensor& out) {
  const int64_t C = x.dim(0), HW = x.dim(1) * x.dim(2);
  if (cpu_bf16("groupnorm", out))
    groupnorm_groups(ctx, x.ptr<bf16_t>(), gamma.ptr<bf16_t>(), beta.ptr<bf16_t>(), groups, eps, silu,
                     out.ptr<bf16_t>(), C, HW);
  else
    groupnorm_groups(ctx, x.ptr<float>(), gamma.ptr<float>(), beta.ptr<float>(), groups, eps, silu, out.ptr<float>(),
                     C, HW);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
