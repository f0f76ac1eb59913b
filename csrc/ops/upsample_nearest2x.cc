// Dispatcher for ops::upsample_nearest2x (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out) {
  NFD_DISPATCH(upsample_nearest2x, out, ctx, x, out);
}

}  // namespace ops
}  // namespace nfd
