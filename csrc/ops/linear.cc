// Dispatcher for ops::linear (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue, const Tensor* gate) {
  NFD_DISPATCH(linear, y, ctx, x, w, bias, y, epilogue, gate);
}

void linear_prepare(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    Epilogue epilogue) {
#ifdef NFD_RT_WITH_CUDA
  if (y.device == Device::cuda) cuda::linear_prepare(ctx, x, w, bias, y, epilogue);
#endif
}

}  // namespace ops
}  // namespace nfd
