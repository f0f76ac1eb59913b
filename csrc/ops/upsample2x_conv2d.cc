// Dispatcher for ops::upsample2x_conv2d (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  NFD_DISPATCH(upsample2x_conv2d, out, ctx, x, w, bias, out);
}

}  // namespace ops
}  // namespace nfd
