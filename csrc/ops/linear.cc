// Dispatcher for ops::linear (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue, const Tensor* gate) {
  if (y.device == Device::cpu) return cpu::linear(ctx, x, w, bias, y, epilogue, gate);
#ifdef NFD_RT_WITH_CUDA
  return cuda::linear(ctx, x, w, bias, y, epilogue, gate);
#else
  fail(ErrorKind::unsupported, "ops::linear: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
