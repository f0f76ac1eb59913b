// Dispatcher for ops::from_uint8 (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image) {
  NFD_DISPATCH(from_uint8, image, ctx, frame, image);
}

}  // namespace ops
}  // namespace nfd
