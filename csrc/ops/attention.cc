// Dispatcher for ops::attention (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out) {
  NFD_DISPATCH(attention, out, ctx, q, k_cache, v_cache, out);
}

bool attention_sized_on_host(const Context& ctx) {
#ifdef NFD_RT_WITH_CUDA
  if (ctx.device == Device::cuda) return cuda::attention_sized_on_host();
#endif
  return false;
}

}  // namespace ops
}  // namespace nfd
