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

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        Tensor& out, float scale_offset, Norm norm) {
  fp32_only("layernorm_modulate", out);
  const int64_t M = x.dim(0), D = x.dim(1);
  const float* xs = x.ptr<float>();
  const float* sh = shift.ptr<float>();
  const float* sc = scale.ptr<float>();
  float* o = out.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xs + r * D;
      const auto [m, rstd] = norm == Norm::rms ? rms_stats(row, D, eps) : norm_stats(row, D, eps);
      for (int64_t d = 0; d < D; ++d) o[r * D + d] = (row[d] - m) * rstd * (scale_offset + sc[d]) + sh[d];
    }
  }, ::nfd::cpu::grain_for(4 * D));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
