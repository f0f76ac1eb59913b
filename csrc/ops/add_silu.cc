// Dispatcher for ops::add_silu (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  NFD_DISPATCH(add_silu, out, ctx, a, b, out);
}

}  // namespace ops
}  // namespace nfd
