// ops::add_silu on the CPU (contract checked in ops/add_silu.cc): out[n] = silu(a[n] + b[n]).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  fp32_only("add_silu", out);
  const int64_t n = out.dim(0);
  const float *pa = a.ptr<float>(), *pb = b.ptr<float>();
  float* po = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = silu(pa[i] + pb[i]);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
