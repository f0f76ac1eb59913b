// ops::layernorm_modulate on the CPU (contract checked in ops/layernorm_modulate.cc): LayerNorm (no affine) +
// adaLN modulation, one row per token; statistics by norm_stats (ops/cpu_common.h).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// bf16 rows: statistics and the modulation in fp32, the result rounded once.
template <typename T>
static void layernorm_rows(const Context& ctx, const T* xs, const T* sh, const T* sc, float eps, T* o, int64_t M,
                           int64_t D) {
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = xs + r * D;
      const auto [m, rstd] = norm_stats(row, D, eps);
      for (int64_t d = 0; d < D; ++d)
        o[r * D + d] = from_float<T>((to_float(row[d]) - m) * rstd * (1.f + to_float(sc[d])) + to_float(sh[d]));
    }
  }, ::nfd::cpu::grain_for(4 * D));
}

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        Tensor& out) {
  const int64_t M = x.dim(0), D = x.dim(1);
  if (cpu_bf16("layernorm_modulate", out))
    layernorm_rows(ctx, x.ptr<bf16_t>(), shift.ptr<bf16_t>(), scale.ptr<bf16_t>(), eps, out.ptr<bf16_t>(), M, D);
  else
    layernorm_rows(ctx, x.ptr<float>(), shift.ptr<float>(), scale.ptr<float>(), eps, out.ptr<float>(), M, D);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
