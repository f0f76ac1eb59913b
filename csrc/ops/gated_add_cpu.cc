// ops::gated_add on the CPU (contract checked in ops/gated_add.cc): rows split over the pool.
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// The loop of linear's gated epilogue without bias (linear_cpu.cc), so a batch and a session alone round alike.
NFD_CPU_MULTIVERSION
static void gated_add_row(const float* x, const float* gate, float* o, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) o[c] += gate[c] * x[c];
}

void gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y) {
  fp32_only("gated_add", y);
  const int64_t M = y.dim(0), N = y.dim(1);
  const float *px = x.ptr<float>(), *pg = gate.ptr<float>();
  float* py = y.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) gated_add_row(px + r * N, pg, py + r * N, N);
  }, ::nfd::cpu::grain_for(2 * N));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
