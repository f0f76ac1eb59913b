// ops::softcap on the CPU (contract checked in ops/softcap.cc): out = tanh(x / cap) * cap, the reference's order,
// in fp32 (a bf16 result rounded once).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

template <typename T>
static void softcap_n(const T* in, float cap, T* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = from_float<T>(std::tanh(to_float(in[i]) / cap) * cap);
}

void softcap(const Context& ctx, const Tensor& x, float cap, Tensor& out) {
  const bool bf16 = cpu_bf16("softcap", out);
  ::nfd::cpu::parallel_for(ctx.threads, out.numel(), [&](int64_t i0, int64_t i1) {
    if (bf16)
      softcap_n(x.ptr<bf16_t>() + i0, cap, out.ptr<bf16_t>() + i0, i1 - i0);
    else
      softcap_n(x.ptr<float>() + i0, cap, out.ptr<float>() + i0, i1 - i0);
  }, ::nfd::cpu::grain_for(32));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
