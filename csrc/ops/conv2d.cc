// Dispatcher for ops::conv2d (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad, Tensor& out, const Tensor* residual) {
  NFD_DISPATCH(conv2d, out, ctx, x, w, bias, stride, pad, out, residual);
}

}  // namespace ops
}  // namespace nfd
