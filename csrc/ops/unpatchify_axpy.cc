// Dispatcher for ops::unpatchify_axpy (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent) {
  if (latent.device == Device::cpu) return cpu::unpatchify_axpy(ctx, tokens, patch, dt, latent);
#ifdef NFD_RT_WITH_CUDA
  return cuda::unpatchify_axpy(ctx, tokens, patch, dt, latent);
#else
  fail(ErrorKind::unsupported, "ops::unpatchify_axpy: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
