// ops::noise_mix: out[e] = a * x[e] + b * normal(seed, state->frame_index, step, e), or b * noise without x
// (math in ops/ops.h, Philox in docs/rng.md). The contract is checked here; the backends only compute.
// Elementwise: out may be x itself (in place).
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out) {
  const Contract c("noise_mix");
  c.defined({{"out", out}});
  if (x.defined()) c.same_shape({"x", x}, {"out", out});
  c.float_operands({{"out", out}, {"x", x}});
  c.same_or_disjoint({"x", x}, {"out", out});
  c.check(step >= 0, "step must be >= 0, got " + std::to_string(step));
  // Philox counter: 32 bits of groups of 4 elements.
  c.check(out.numel() <= (int64_t(1) << 34), "out has more elements than the noise counter covers (2^34), got " +
                                                 out.describe());
  if (const FrameState* st = c.frame_state(ctx, out.device))
    c.check(st->frame_index >= 0, "frame_index must be >= 0, got " + std::to_string(st->frame_index));
  NFD_DISPATCH(noise_mix, out, ctx, seed, step, a, x, b, out);
}

}  // namespace ops
}  // namespace nfd
