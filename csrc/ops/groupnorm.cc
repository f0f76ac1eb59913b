// Dispatcher for ops::groupnorm (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps, bool silu, Tensor& out) {
  NFD_DISPATCH(groupnorm, out, ctx, x, gamma, beta, groups, eps, silu, out);
}

}  // namespace ops
}  // namespace nfd
