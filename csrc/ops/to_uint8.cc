// Dispatcher for ops::to_uint8 (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void to_uint8(const Context& ctx, const Tensor& image, Tensor& out) {
  NFD_DISPATCH(to_uint8, out, ctx, image, out);
}

}  // namespace ops
}  // namespace nfd
