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

// A 3x3, stride 1, pad 1 convolution with few output channels (the decoder's RGB conv_out), computed directly:
// as a GEMM it has 3 rows, which OpenBLAS runs at a sixth of its speed, and im2col would copy the input 9x.
// The input is first copied with a zero border ([Cin, H + 2, W + 2]) so no tap needs a bounds test; then each
// run of 16 output columns keeps one register of sums per output channel while it walks the Cin x 9 taps.
constexpr int64_t kDirectMaxCout = 4;
template <int kCout>
static inline void conv3x3_rows(const float* padded, const float* w, const float* bias, const float* residual,
                                int64_t Cin, int64_t H, int64_t W, float* out, int64_t y0, int64_t y1) {
  const int64_t Wp = W + 2, plane = (H + 2) * Wp;
  for (int64_t y = y0; y < y1; ++y) {
    int64_t x0 = 0;
    for (; x0 + 16 <= W; x0 += 16) {
      Vec16 acc[kCout];
      for (int co = 0; co < kCout; ++co) acc[co] = Vec16{} + (bias ? bias[co] : 0.f);
      for (int64_t ci = 0; ci < Cin; ++ci)
        for (int64_t ky = 0; ky < 3; ++ky) {
          const float* row = padded + ci * plane + (y + ky) * Wp + x0;  // padded column x0 + kx = input x0 + kx - 1
          const float* k3 = w + (ci * 3 + ky) * 3;
          for (int64_t kx = 0; kx < 3; ++kx) {
            const Vec16 v = load16(row + kx);
            for (int co = 0; co < kCout; ++co) acc[co] += k3[co * Cin * 9 + kx] * v;
          }
        }
      for (int co = 0; co < kCout; ++co) {
        float* o = out + (co * H + y) * W + x0;
        store16(o, residual ? load16(residual + (co * H + y) * W + x0) + acc[co] : acc[co]);
      }
    }
    for (; x0 < W; ++x0)  // the last W % 16 columns
      for (int co = 0; co < kCout; ++co) {
        float a = bias ? bias[co] : 0.f;
        for (int64_t ci = 0; ci < Cin; ++ci)
          for (int64_t ky = 0; ky < 3; ++ky)
            for (int64_t kx = 0; kx < 3; ++kx)
              a += w[((co * Cin + ci) * 3 + ky) * 3 + kx] * padded[ci * plane + (y + ky) * Wp + x0 + kx];
        const int64_t i = (co * H + y) * W + x0;
        out[i] = residual ? residual[i] + a : a;
      }
  }
}
NFD_CPU_MULTIVERSION
static void conv3x3_few_outputs(const float* padded, const float* w, const float* bias, const float* residual,
                                int64_t Cin, int64_t H, int64_t W, int64_t Cout, float* out, int64_t y0,
                                int64_t y1) {
  switch (Cout) {
    case 1: return conv3x3_rows<1>(padded, w, bias, residual, Cin, H, W, out, y0, y1);
    case 2: return conv3x3_rows<2>(padded, w, bias, residual, Cin, H, W, out, y0, y1);
    case 3: return conv3x3_rows<3>(padded, w, bias, residual, Cin, H, W, out, y0, y1);
    default: return conv3x3_rows<4>(padded, w, bias, residual, Cin, H, W, out, y0, y1);
  }
}

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

  if (k == 3 && stride == 1 && pad == 1 && Cout <= kDirectMaxCout) {
    const int64_t Wp = W + 2, plane = (H + 2) * Wp;
    float* padded = scratch(size_t(Cin * plane));
    const float* xs = x.ptr<float>();
    for (int64_t ci = 0; ci < Cin; ++ci) {
      float* p = padded + ci * plane;
      std::fill(p, p + Wp, 0.f);
      for (int64_t y = 0; y < H; ++y) {
        float* r = p + (y + 1) * Wp;
        r[0] = 0.f;
        std::copy(xs + (ci * H + y) * W, xs + (ci * H + y + 1) * W, r + 1);
        r[W + 1] = 0.f;
      }
      std::fill(p + (H + 1) * Wp, p + plane, 0.f);
    }
    const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
    const float* rs = res ? residual->ptr<float>() : nullptr;
    ::nfd::cpu::parallel_for(ctx.threads, Ho, [&](int64_t y0, int64_t y1) {
      conv3x3_few_outputs(padded, w.ptr<float>(), b, rs, Cin, H, W, Cout, out.ptr<float>(), y0, y1);
    }, ::nfd::cpu::grain_for(Cout * Cin * 9 * Wo));
    return;
  }
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
