// ops::add_silu on the CPU (contract checked in ops/add_silu.cc): out[n] = silu(a[n] + b[n]), or silu(a[n]).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  fp32_only("add_silu", out);
  const int64_t n = out.numel();
  const float* pa = a.ptr<float>();
  float* po = out.ptr<float>();
  if (!b.defined()) {
    ::nfd::cpu::parallel_for(ctx.threads, n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) po[i] = silu(pa[i]);
    }, ::nfd::cpu::grain_for(16));
    return;
  }
  const float* pb = b.ptr<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = silu(pa[i] + pb[i]);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
