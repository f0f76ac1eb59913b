// conv2d of one image on the CPU: im2col into a scratch buffer, then one sgemm w[Cout, Cin*k*k] @ col.
// (A Winograd F(2x2, 3x3) path was tried: its GEMMs are 2.25x smaller, but without -march the tile transforms
// cost more than that saves on the decoder's sizes; see docs/cpu-backend.md.)
#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
            Tensor& out, const Tensor* residual) {
  expect("conv2d", "w", w, {-1, -1, -1, -1});
  const int64_t Cout = w.dim(0), Cin = w.dim(1), k = w.dim(2);
  NFD_CHECK(w.dim(3) == k, invalid_argument, "ops::conv2d: square kernels only, got " + w.describe());
  NFD_CHECK(stride >= 1 && pad >= 0, invalid_argument, "ops::conv2d: stride must be >= 1 and pad >= 0");
  expect("conv2d", "x", x, {Cin, -1, -1});
  const int64_t H = x.dim(1), W = x.dim(2);
  const int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
  NFD_CHECK(Ho > 0 && Wo > 0, invalid_argument, "ops::conv2d: image smaller than the kernel");
  expect("conv2d", "out", out, {Cout, Ho, Wo});
  if (bias.defined()) expect("conv2d", "bias", bias, {Cout});
  const bool res = residual && residual->defined();
  if (res) expect("conv2d", "residual", *residual, {Cout, Ho, Wo});
  NFD_CHECK(x.data != out.data, invalid_argument, "ops::conv2d: x and out must not alias");

  const int64_t P = Ho * Wo, KK = Cin * k * k;
  const float* col = x.ptr<float>();
  if (!(k == 1 && stride == 1 && pad == 0)) {  // a 1x1 convolution reads x directly
    float* c = scratch(size_t(KK * P));
    const float* xs = x.ptr<float>();
    ::nfd::cpu::parallel_for(ctx.threads, KK, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t ci = r / (k * k), ky = (r / k) % k, kx = r % k;
        float* dst = c + r * P;
        // Output columns whose input column lies inside the image: ox in [lo, hi).
        const int64_t lo = std::min(Wo, std::max<int64_t>(0, (pad - kx + stride - 1) / stride));
        const int64_t hi = std::max(lo, std::min(Wo, (W + pad - kx + stride - 1) / stride));
        for (int64_t oy = 0; oy < Ho; ++oy, dst += Wo) {
          const int64_t iy = oy * stride - pad + ky;
          if (iy < 0 || iy >= H) {
            std::fill(dst, dst + Wo, 0.f);
            continue;
          }
          const float* row = xs + (ci * H + iy) * W;  // input column of ox: ox * stride - pad + kx
          std::fill(dst, dst + lo, 0.f);
          if (stride == 1) {
            std::copy(row + lo - pad + kx, row + hi - pad + kx, dst + lo);
          } else {
            for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = row[ox * stride - pad + kx];
          }
          std::fill(dst + hi, dst + Wo, 0.f);
        }
      }
    }, ::nfd::cpu::grain_for(P));
    col = c;
  }
  // Threads split the output pixels: a single-threaded sgemm per block of columns, then bias and residual.
  ::nfd::cpu::set_blas_threads(1);
  float* o = out.ptr<float>();
  const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
  const float* rs = res ? residual->ptr<float>() : nullptr;
  ::nfd::cpu::parallel_for(ctx.threads, P, [&](int64_t p0, int64_t p1) {
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(p1 - p0), int(KK), 1.f,
                      w.ptr<float>(), int(KK), col + p0, int(P), 0.f, o + p0, int(P));
    if (!b && !rs) return;
    for (int64_t c = 0; c < Cout; ++c)
      for (int64_t i = c * P + p0; i < c * P + p1; ++i) {
        float v = b ? o[i] + b[c] : o[i];
        o[i] = rs ? rs[i] + v : v;  // residual + conv, the order of the reference's skip + h
      }
  }, ::nfd::cpu::grain_for(Cout * KK));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
