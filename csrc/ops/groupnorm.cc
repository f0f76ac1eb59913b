// ops::groupnorm: out[C, H, W] = GroupNorm(x; groups, eps) * gamma[C] + beta[C], then SiLU when `silu` (math in
// ops/ops.h). The contract is checked here; the backends only compute. Group by group (statistics first): out
// may be x itself (in place).
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
               bool silu, Tensor& out) {
  const Contract c("groupnorm");
  c.defined({{"x", x}, {"gamma", gamma}, {"beta", beta}, {"out", out}});
  c.shape({"x", x}, {-1, -1, -1}, "C, H, W");
  const int64_t C = x.dim(0);
  c.check(groups > 0 && C % groups == 0,
          "groups must be > 0 and divide C = " + std::to_string(C) + ", got " + std::to_string(groups));
  c.shape({"gamma", gamma}, {C}, "C");
  c.shape({"beta", beta}, {C}, "C");
  c.same_shape({"out", out}, {"x", x});
  c.float_operands({{"out", out}, {"x", x}, {"gamma", gamma}, {"beta", beta}});
  c.same_or_disjoint({"x", x}, {"out", out});
  c.disjoint({"gamma", gamma}, {"out", out});
  c.disjoint({"beta", beta}, {"out", out});
  NFD_DISPATCH(groupnorm, out, ctx, x, gamma, beta, groups, eps, silu, out);
}

}  // namespace ops
}  // namespace nfd
