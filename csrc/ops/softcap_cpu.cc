// ops::softcap on the CPU (contract checked in ops/softcap.cc): out = tanh(x / cap) * cap, the reference's order.
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void softcap(const Context& ctx, const Tensor& x, float cap, Tensor& out) {
  fp32_only("softcap", out);
  const float* in = x.ptr<float>();
  float* o = out.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, out.numel(), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) o[i] = std::tanh(in[i] / cap) * cap;
  }, ::nfd::cpu::grain_for(32));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
