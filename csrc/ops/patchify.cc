// Dispatcher for ops::patchify (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  NFD_DISPATCH(patchify, tokens, ctx, latent, patch, tokens);
}

}  // namespace ops
}  // namespace nfd
