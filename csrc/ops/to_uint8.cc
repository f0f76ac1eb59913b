// ops::to_uint8: image[3, H, W] in [-1, 1] -> u8[H, W, 3], rounded or truncated (math in ops/ops.h). The contract is checked here;
// the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void to_uint8(const Context& ctx, const Tensor& image, Tensor& out, Pixels pixels) {
  const Contract c("to_uint8");
  c.defined({{"image", image}, {"out", out}});
  c.shape({"image", image}, {3, -1, -1}, "3, H, W");
  c.shape({"out", out}, {image.dim(1), image.dim(2), 3}, "H, W, 3");
  c.float_operands({{"image", image}});
  c.dtype({"out", out}, DType::u8);
  c.same_device({"out", out}, {"image", image});
  c.disjoint({"image", image}, {"out", out});
  NFD_DISPATCH(to_uint8, out, ctx, image, out, pixels);
}

}  // namespace ops
}  // namespace nfd
