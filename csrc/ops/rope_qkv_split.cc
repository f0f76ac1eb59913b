// Dispatcher for ops::rope_qkv_split (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache, Tensor& v_cache) {
  NFD_DISPATCH(rope_qkv_split, q_out, ctx, qkv, rope, q_out, k_cache, v_cache);
}

}  // namespace ops
}  // namespace nfd
