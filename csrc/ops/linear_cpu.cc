// linear on the CPU: one OpenBLAS sgemm, then the epilogue (bias, GELU-tanh or gated residual) over rows.
#include <cblas.h>

#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

static inline float gelu_tanh(float v) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * v * (1.f + std::tanh(k * (v + 0.044715f * v * v * v)));
}

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue,
            const Tensor* gate) {
  expect("linear", "w", w, {-1, -1});
  const int64_t N = w.dim(0), K = w.dim(1);
  expect("linear", "x", x, {-1, K});
  const int64_t M = x.dim(0);
  expect("linear", "y", y, {M, N});
  if (bias.defined()) expect("linear", "bias", bias, {N});
  const bool gated = epilogue == Epilogue::gated_residual;
  if (gated) {
    NFD_CHECK(gate && gate->defined(), invalid_argument, "ops::linear: gated_residual needs a gate");
    expect("linear", "gate", *gate, {N});
  }
  NFD_CHECK(x.data != y.data, invalid_argument, "ops::linear: x and y must not alias");

  ::nfd::cpu::set_blas_threads(ctx.threads);
  // The gated residual accumulates into y, so the product goes to scratch first.
  float* prod = gated ? scratch(size_t(M * N)) : y.ptr<float>();
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.f, x.ptr<float>(), int(K),
                    w.ptr<float>(), int(K), 0.f, prod, int(N));

  const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
  const float* g = gated ? gate->ptr<float>() : nullptr;
  float* out = y.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* p = prod + r * N;
      float* o = out + r * N;
      for (int64_t n = 0; n < N; ++n) {
        float v = b ? p[n] + b[n] : p[n];
        if (epilogue == Epilogue::gelu_tanh) v = gelu_tanh(v);
        if (gated)
          o[n] += g[n] * v;
        else
          o[n] = v;
      }
    }
  }, 16);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
