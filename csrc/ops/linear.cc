// ops::linear and ops::linear_prepare (math in ops/ops.h): the contract is checked here, once for every
// backend; ops/linear_cpu.cc and ops/linear_cuda.cu only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

// x [M, K], w [N, K], y [M, N], bias [N] (optional), gate [N] (gated_residual only); one device and one dtype;
// y overlaps none of its inputs (the GEMM reads them while y is written).
static void check_linear(const char* op, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                         bool gated, const Tensor* gate) {
  const Contract c(op);
  c.defined({{"x", x}, {"w", w}, {"y", y}});
  c.shape({"w", w}, {-1, -1}, "N, K");
  const int64_t N = w.dim(0), K = w.dim(1);
  c.shape({"x", x}, {-1, K}, "M, K");
  c.shape({"y", y}, {x.dim(0), N}, "M, N");
  if (bias.defined()) c.shape({"bias", bias}, {N}, "N");
  const Tensor none;
  const Tensor& g = gated && gate ? *gate : none;
  if (gated) {
    c.check(g.defined(), "epilogue gated_residual needs a gate, got none");
    c.shape({"gate", g}, {N}, "N");
  }
  c.float_operands({{"y", y}, {"x", x}, {"w", w}, {"bias", bias}, {"gate", g}});
  c.disjoint({"x", x}, {"y", y});
  c.disjoint({"w", w}, {"y", y});
  c.disjoint({"bias", bias}, {"y", y});
  c.disjoint({"gate", g}, {"y", y});
}

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue,
            const Tensor* gate) {
  const bool gated = epilogue == Epilogue::gated_residual;
  check_linear("linear", x, w, bias, y, gated, gate);
  NFD_DISPATCH(linear, y, ctx, x, w, bias, y, epilogue, gated ? gate : nullptr);
}

// The contract of linear without the gate: only the GEMM part is prepared (a gated residual's add is the same
// for every engine).
void linear_prepare(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    Epilogue epilogue) {
  check_linear("linear_prepare", x, w, bias, y, false, nullptr);
#ifdef NFD_RT_WITH_CUDA
  if (y.device == Device::cuda) cuda::linear_prepare(ctx, x, w, bias, y, epilogue);
#else
  (void)ctx;
  (void)epilogue;
#endif
}

}  // namespace ops
}  // namespace nfd
