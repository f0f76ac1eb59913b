// Dispatcher for ops::noise_mix (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out) {
  NFD_DISPATCH(noise_mix, out, ctx, seed, step, a, x, b, out);
}

}  // namespace ops
}  // namespace nfd
