// ops::layernorm_modulate on the CPU (contract checked in ops/layernorm_modulate.cc): LayerNorm (no affine) +
// adaLN modulation (scale_offset 1) or an affine (scale_offset 0), one row per token; statistics by norm_stats, or
// rms_stats for the RMSNorm (ops/cpu_common.h).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// Statistics and the modulation in fp32; a bf16 result is rounded once.
template <typename T>
static void layernorm_rows(const Context& ctx, const T* xs, const T* sh, const T* sc, float eps, float scale_offset,
                           Norm norm, T* o, int64_t M, int64_t D) {
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = xs + r * D;
      const auto [m, rstd] = norm == Norm::rms ? rms_stats(row, D, eps) : norm_stats(row, D, eps);
      for (int64_t d = 0; d < D; ++d)
        o[r * D + d] =
            from_float<T>((to_float(row[d]) - m) * rstd * (scale_offset + to_float(sc[d])) + to_float(sh[d]));
    }
  }, ::nfd::cpu::grain_for(4 * D));
}

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        Tensor& out, float scale_offset, Norm norm) {
  const int64_t M = x.dim(0), D = x.dim(1);
  if (cpu_bf16("layernorm_modulate", out))
    layernorm_rows(ctx, x.ptr<bf16_t>(), shift.ptr<bf16_t>(), scale.ptr<bf16_t>(), eps, scale_offset,
                   norm, out.ptr<bf16_t>(), M, D);
  else
    layernorm_rows(ctx, x.ptr<float>(), shift.ptr<float>(), scale.ptr<float>(), eps, scale_offset, norm,
                   out.ptr<float>(), M, D);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
