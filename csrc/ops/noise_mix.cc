// Dispatcher for ops::noise_mix (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out) {
  if (out.device == Device::cpu) return cpu::noise_mix(ctx, seed, step, a, x, b, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::noise_mix(ctx, seed, step, a, x, b, out);
#else
  fail(ErrorKind::unsupported, "ops::noise_mix: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
