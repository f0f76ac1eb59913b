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
NFD_CPU_MULTIVERSION
static void gated_add_row(const bf16_t* x, const bf16_t* gate, bf16_t* o, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) o[c] = from_float<bf16_t>(to_float(o[c]) + to_float(gate[c]) * to_float(x[c]));
}

template <typename T>
static void gated_add_rows(const Context& ctx, const T* px, const T* pg, T* py, int64_t M, int64_t N) {
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) gated_add_row(px + r * N, pg, py + r * N, N);
  }, ::nfd::cpu::grain_for(2 * N));
}

void gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y) {
  const int64_t M = y.dim(0), N = y.dim(1);
  if (cpu_bf16("gated_add", y))
    gated_add_rows(ctx, x.ptr<bf16_t>(), gate.ptr<bf16_t>(), y.ptr<bf16_t>(), M, N);
  else
    gated_add_rows(ctx, x.ptr<float>(), gate.ptr<float>(), y.ptr<float>(), M, N);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
