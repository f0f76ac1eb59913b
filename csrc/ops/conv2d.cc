// Dispatcher for ops::conv2d (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad, Tensor& out, const Tensor* residual) {
  if (out.device == Device::cpu) return cpu::conv2d(ctx, x, w, bias, stride, pad, out, residual);
#ifdef NFD_RT_WITH_CUDA
  return cuda::conv2d(ctx, x, w, bias, stride, pad, out, residual);
#else
  fail(ErrorKind::unsupported, "ops::conv2d: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
