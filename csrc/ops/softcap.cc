// ops::softcap: out = cap * tanh(x / cap), any shape (math in ops/ops.h; TAEHV's latent soft clamp, cap 3). The
// contract is checked here; the backends only compute. Elementwise: out may be x itself (in place).
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void softcap(const Context& ctx, const Tensor& x, float cap, Tensor& out) {
  const Contract c("softcap");
  c.defined({{"x", x}, {"out", out}});
  c.same_shape({"out", out}, {"x", x});
  c.float_operands({{"out", out}, {"x", x}});
  c.same_or_disjoint({"x", x}, {"out", out});
  c.check(cap > 0.f, "cap must be > 0, got " + std::to_string(cap));
  NFD_DISPATCH(softcap, out, ctx, x, cap, out);
}

}  // namespace ops
}  // namespace nfd
