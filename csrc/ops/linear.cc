// Dispatcher for ops::linear (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue, const Tensor* gate) {
  NFD_DISPATCH(linear, y, ctx, x, w, bias, y, epilogue, gate);
}

}  // namespace ops
}  // namespace nfd
