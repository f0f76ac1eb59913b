// ops::add_silu on the CPU (contract checked in ops/add_silu.cc): out[n] = silu(a[n] + b[n]), or silu(a[n]).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

template <typename T>
static void add_silu_n(const T* pa, const T* pb, T* po, int64_t n) {
  for (int64_t i = 0; i < n; ++i) po[i] = from_float<T>(silu(to_float(pa[i]) + to_float(pb[i])));
}

template <typename T>
static void silu_n(const T* pa, T* po, int64_t n) {
  for (int64_t i = 0; i < n; ++i) po[i] = from_float<T>(silu(to_float(pa[i])));
}

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  const bool bf16 = cpu_bf16("add_silu", out);
  if (!b.defined()) {  // silu(a), any shape: the SiLUs of a whole frame, in parallel
    ::nfd::cpu::parallel_for(ctx.threads, n, [&](int64_t i0, int64_t i1) {
      if (bf16)
        silu_n(a.ptr<bf16_t>() + i0, out.ptr<bf16_t>() + i0, i1 - i0);
      else
        silu_n(a.ptr<float>() + i0, out.ptr<float>() + i0, i1 - i0);
    }, ::nfd::cpu::grain_for(16));
    return;
  }
  if (bf16)
    add_silu_n(a.ptr<bf16_t>(), b.ptr<bf16_t>(), out.ptr<bf16_t>(), n);
  else
    add_silu_n(a.ptr<float>(), b.ptr<float>(), out.ptr<float>(), n);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
