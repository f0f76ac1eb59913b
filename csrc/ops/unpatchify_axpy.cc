// ops::unpatchify_axpy: latent[C, h, w] = keep * latent + dt * unpatchify(tokens[N, C*p*p]) (math in ops/ops.h).
// The contract
// (shared with patchify, ops/patch_layout.h) is checked here; the backends only compute.
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {

void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent, float keep) {
  check_patch_shapes(Contract("unpatchify_axpy"), latent, patch, tokens);
  NFD_DISPATCH(unpatchify_axpy, latent, ctx, tokens, patch, dt, latent, keep);
}

}  // namespace ops
}  // namespace nfd
