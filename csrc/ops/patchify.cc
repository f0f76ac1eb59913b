// ops::patchify: latent[C, h, w] -> tokens[N, C*p*p] (math in ops/ops.h). The contract (shared with
// unpatchify_axpy, ops/patch_layout.h) is checked here; the backends only compute.
#include "ops/ops_impl.h"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {

void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  check_patch_shapes(Contract("patchify"), latent, patch, tokens);
  NFD_DISPATCH(patchify, tokens, ctx, latent, patch, tokens);
}

}  // namespace ops
}  // namespace nfd
