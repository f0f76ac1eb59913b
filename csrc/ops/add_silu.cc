// ops::add_silu: out[n] = silu(a[n] + b[n]), or silu(a) of any shape without b (math in ops/ops.h). The contract is
// checked here; the backends only compute. Elementwise: out may be a or b itself (in place), or apart from them.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  const Contract c("add_silu");
  if (!b.defined()) {  // out = silu(a), any shape
    c.defined({{"a", a}, {"out", out}});
    c.same_shape({"out", out}, {"a", a});
    c.float_operands({{"out", out}, {"a", a}});
    c.same_or_disjoint({"a", a}, {"out", out});
    NFD_DISPATCH(add_silu, out, ctx, a, b, out);
    return;
  }
  c.defined({{"a", a}, {"b", b}, {"out", out}});
  c.shape({"a", a}, {-1}, "n");
  c.shape({"b", b}, {a.dim(0)}, "n");
  c.shape({"out", out}, {a.dim(0)}, "n");
  c.float_operands({{"out", out}, {"a", a}, {"b", b}});
  c.same_or_disjoint({"a", a}, {"out", out});
  c.same_or_disjoint({"b", b}, {"out", out});
  NFD_DISPATCH(add_silu, out, ctx, a, b, out);
}

}  // namespace ops
}  // namespace nfd
