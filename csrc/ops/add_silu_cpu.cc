#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  expect("add_silu", "a", a, {-1});
  const int64_t n = a.dim(0);
  expect("add_silu", "b", b, {n});
  expect("add_silu", "out", out, {n});
  const float *pa = a.ptr<float>(), *pb = b.ptr<float>();
  float* po = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = silu(pa[i] + pb[i]);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
