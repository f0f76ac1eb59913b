// ops::from_uint8: u8[H, W, 3] -> image[3, H, W] = u / 127.5 - 1 or (u / 255) * 2 - 1 (math in ops/ops.h). The contract is checked
// here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image, Pixels pixels) {
  const Contract c("from_uint8");
  c.defined({{"frame", frame}, {"image", image}});
  c.shape({"frame", frame}, {-1, -1, 3}, "H, W, 3");
  c.shape({"image", image}, {3, frame.dim(0), frame.dim(1)}, "3, H, W");
  c.dtype({"frame", frame}, DType::u8);
  c.float_operands({{"image", image}});
  c.same_device({"frame", frame}, {"image", image});
  c.disjoint({"frame", frame}, {"image", image});
  NFD_DISPATCH(from_uint8, image, ctx, frame, image, pixels);
}

}  // namespace ops
}  // namespace nfd
