// ops::noise_mix on the CPU (contract checked in ops/noise_mix.cc):
// out = a * x + b * Philox normal(seed, frame_index, step, e)   (core/philox.h, identical to nfd_rt.rng).
#include "core/philox.h"
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// In fp32, rounded once to bf16 for a bf16 output.
template <typename T>
static void mix(const Context& ctx, uint64_t seed, int step, float a, const T* xs, float b, T* o, int64_t n) {
  const FrameState& st = *ctx.state;
  ::nfd::cpu::parallel_for(ctx.threads, (n + 3) / 4, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      float z[4];
      philox::normal4(seed, uint32_t(st.frame_index), uint32_t(step), uint32_t(g), z);
      for (int64_t e = g * 4; e < std::min(n, g * 4 + 4); ++e)
        o[e] = from_float<T>(xs ? a * to_float(xs[e]) + b * z[e - g * 4] : b * z[e - g * 4]);
    }
  }, ::nfd::cpu::grain_for(200));  // a Philox call and two Box-Muller pairs in double
}

void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out) {
  if (cpu_bf16("noise_mix", out))
    mix(ctx, seed, step, a, x.defined() ? x.ptr<bf16_t>() : nullptr, b, out.ptr<bf16_t>(), out.numel());
  else
    mix(ctx, seed, step, a, x.defined() ? x.ptr<float>() : nullptr, b, out.ptr<float>(), out.numel());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
