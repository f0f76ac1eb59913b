// Dispatcher for ops::unpatchify_axpy (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent) {
  NFD_DISPATCH(unpatchify_axpy, latent, ctx, tokens, patch, dt, latent);
}

}  // namespace ops
}  // namespace nfd
