// ops::copy between two host tensors (contract checked in ops/copy.cc): same dtype -> memcpy; f32 <-> bf16 converts
// (round to nearest even). f16 is a CUDA dtype.
#include <cstring>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void copy(const Context& ctx, const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  if (src.dtype == dst.dtype) {
    std::memmove(dst.data, src.data, src.bytes());
  } else if (src.dtype == DType::f32 && dst.dtype == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) dst.ptr<bf16_t>()[i] = from_float<bf16_t>(src.ptr<float>()[i]);
  } else if (src.dtype == DType::bf16 && dst.dtype == DType::f32) {
    for (int64_t i = 0; i < n; ++i) dst.ptr<float>()[i] = to_float(src.ptr<bf16_t>()[i]);
  } else {
    // The CPU backend's own limit: f16 is a CUDA dtype.
    fail(ErrorKind::unsupported, "ops::copy: the CPU backend converts only between f32 and bf16, got src " +
                                     src.describe() + " and dst " + dst.describe());
  }
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
