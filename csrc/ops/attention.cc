// Dispatcher for ops::attention (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out) {
  if (out.device == Device::cpu) return cpu::attention(ctx, q, k_cache, v_cache, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::attention(ctx, q, k_cache, v_cache, out);
#else
  fail(ErrorKind::unsupported, "ops::attention: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
