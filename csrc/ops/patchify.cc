// Dispatcher for ops::patchify (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  if (tokens.device == Device::cpu) return cpu::patchify(ctx, latent, patch, tokens);
#ifdef NFD_RT_WITH_CUDA
  return cuda::patchify(ctx, latent, patch, tokens);
#else
  fail(ErrorKind::unsupported, "ops::patchify: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
