// Dispatcher for ops::rope_qkv_split (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache, Tensor& v_cache) {
  if (q_out.device == Device::cpu) return cpu::rope_qkv_split(ctx, qkv, rope, q_out, k_cache, v_cache);
#ifdef NFD_RT_WITH_CUDA
  return cuda::rope_qkv_split(ctx, qkv, rope, q_out, k_cache, v_cache);
#else
  fail(ErrorKind::unsupported, "ops::rope_qkv_split: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
