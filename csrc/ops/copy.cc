// ops::copy: dst = src, any two devices, same shape; same dtype, or a conversion among f32, bf16 and f16 (math
// in ops/ops.h). The contract is checked here; the backends only compute (the CPU converts only between f32
// and bf16). A copy that touches CUDA memory belongs to the CUDA backend.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

static bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

void copy(const Context& ctx, const Tensor& src, Tensor& dst) {
  const Contract c("copy");
  c.defined({{"src", src}, {"dst", dst}});
  c.same_shape({"dst", dst}, {"src", src});
  c.check(src.dtype == dst.dtype || (is_float(src.dtype) && is_float(dst.dtype)),
          "converts only among f32, bf16 and f16, got src " + src.describe() + " and dst " + dst.describe());
  c.same_or_disjoint({"src", src}, {"dst", dst});
  if (src.data == dst.data && src.device == dst.device && src.dtype == dst.dtype) return;  // a tensor onto itself
  if (src.device == Device::cpu && dst.device == Device::cpu) return cpu::copy(ctx, src, dst);
#ifdef NFD_RT_WITH_CUDA
  return cuda::copy(ctx, src, dst);
#else
  c.fail(ErrorKind::unsupported, "device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
