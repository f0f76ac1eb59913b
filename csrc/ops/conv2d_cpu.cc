// ops::conv2d on the CPU (contract checked in ops/conv2d.cc), one image, three ways:
//   3x3, stride 1, pad 1, <= 4 output channels (the RGB conv_out): direct, in registers;
//   3x3, stride 1, pad 1, even sides, >= kWinogradMinPixels: Winograd F(2x2, 3x3), 16 OpenBLAS GEMMs;
//   anything else: im2col into a scratch buffer, then one sgemm w[Cout, Cin*k*k] @ col.
// On tiny's decoder (1 thread) the 32 -> 32 conv at 64x64 takes 0.45 ms with Winograd, 0.80 ms with im2col
// and 0.40 ms in PyTorch (oneDNN, AVX-512); see docs/cpu-backend.md.
#include "backends/cpu/blas.h"

#include <algorithm>
#include <cstring>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

constexpr int64_t kDirectMaxCout = 4;
constexpr int64_t kWinogradMinPixels = 1024;  // below 32x32 the transforms cost more than the GEMM saves

// A 3x3, stride 1, pad 1 convolution with few output channels (the decoder's RGB conv_out), computed directly:
// as a GEMM it has 3 rows, which OpenBLAS runs at a sixth of its speed, and im2col would copy the input 9x.
// Each band of output rows first gets a zero-bordered copy of the input rows it reads (conv2d below), so no
// tap needs a bounds test; then each run of 16 output columns keeps one register of sums per output channel
// while it walks the Cin x 9 taps. Output rows [y0, y1) of a band that starts at image row `band0`: padded row
// r of a channel (plane floats apart) holds image row band0 - 1 + r.
template <int kCout>
NFD_CPU_INLINE void conv3x3_rows(const float* padded, int64_t plane, int64_t band0, const float* w, const float* bias,
                                const float* residual, int64_t Cin, int64_t H, int64_t W, float* out, int64_t y0,
                                int64_t y1) {
  const int64_t Wp = W + 2;
  for (int64_t y = y0; y < y1; ++y) {
    int64_t x0 = 0;
    for (; x0 + 16 <= W; x0 += 16) {
      Vec16 acc[kCout];
      for (int co = 0; co < kCout; ++co) acc[co] = Vec16{} + (bias ? bias[co] : 0.f);
      for (int64_t ci = 0; ci < Cin; ++ci)
        for (int64_t ky = 0; ky < 3; ++ky) {
          // padded column x0 + kx = input column x0 + kx - 1
          const float* row = padded + ci * plane + (y - band0 + ky) * Wp + x0;
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
              a += w[((co * Cin + ci) * 3 + ky) * 3 + kx] * padded[ci * plane + (y - band0 + ky) * Wp + x0 + kx];
        const int64_t i = (co * H + y) * W + x0;
        out[i] = residual ? residual[i] + a : a;
      }
  }
}
NFD_CPU_MULTIVERSION
static void conv3x3_few_outputs(const float* padded, int64_t plane, int64_t band0, const float* w,
                                const float* bias, const float* residual, int64_t Cin, int64_t H, int64_t W,
                                int64_t Cout, float* out, int64_t y0, int64_t y1) {
  switch (Cout) {
    case 1: return conv3x3_rows<1>(padded, plane, band0, w, bias, residual, Cin, H, W, out, y0, y1);
    case 2: return conv3x3_rows<2>(padded, plane, band0, w, bias, residual, Cin, H, W, out, y0, y1);
    case 3: return conv3x3_rows<3>(padded, plane, band0, w, bias, residual, Cin, H, W, out, y0, y1);
    default: return conv3x3_rows<4>(padded, plane, band0, w, bias, residual, Cin, H, W, out, y0, y1);
  }
}

// Winograd F(2x2, 3x3) for the VAE's 3x3 stride-1 convolutions on larger images: each 2x2 block of outputs
// ("tile") comes from a 4x4 input patch d as Y = A^T [(G g G^T) . (B^T d B)] A, so the convolution becomes
// 16 GEMMs U_xi [Cout, Cin] x V_xi [Cin, tiles] with 2.25x fewer multiply-adds than im2col's single GEMM, at
// the cost of the three transforms below. Every transform runs along whole image rows with the tiles across
// the vector lanes (the even/odd columns of a row), so they vectorise; fp32 rounding stays near 1e-6.
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// U[xi][co][ci] (xi = 4 r + c) = (G g G^T)[r][c] of the 3x3 kernel g = w[co][ci].
NFD_CPU_MULTIVERSION
static void winograd_weights(const float* __restrict w, int64_t pairs, float* __restrict U, int64_t us) {
  for (int64_t n = 0; n < pairs; ++n) {
    const float* g = w + n * 9;
    float gg[4][3];  // G g
    for (int c = 0; c < 3; ++c) {
      gg[0][c] = g[c];
      gg[1][c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
      gg[2][c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
      gg[3][c] = g[6 + c];
    }
    for (int r = 0; r < 4; ++r) {  // (G g) G^T
      U[(r * 4 + 0) * us + n] = gg[r][0];
      U[(r * 4 + 1) * us + n] = 0.5f * (gg[r][0] + gg[r][1] + gg[r][2]);
      U[(r * 4 + 2) * us + n] = 0.5f * (gg[r][0] - gg[r][1] + gg[r][2]);
      U[(r * 4 + 3) * us + n] = gg[r][2];
    }
  }
}

// The transforms' inner loops take their rows as __restrict parameters: GCC honours restrict only there, and
// without it gives up on proving that this many pointers do not overlap and leaves the loops scalar.

// t_r = (B^T d)_r along a row of W columns: d0..d3 are input rows 2ty - 1 .. 2ty + 2.
NFD_CPU_INLINE void winograd_rows(const float* __restrict d0, const float* __restrict d1,
                                 const float* __restrict d2, const float* __restrict d3, float* __restrict t0,
                                 float* __restrict t1, float* __restrict t2, float* __restrict t3, int64_t W) {
  for (int64_t i = 0; i < W; ++i) {
    t0[i] = d0[i] - d2[i];
    t1[i] = d1[i] + d2[i];
    t2[i] = d2[i] - d1[i];
    t3[i] = d1[i] - d3[i];
  }
}

// (t B) for each tile tx of a row t (valid at t[-1] and t[W], both zero): columns 2tx - 1 .. 2tx + 2.
NFD_CPU_INLINE void winograd_columns(const float* __restrict t, float* __restrict v0, float* __restrict v1,
                                    float* __restrict v2, float* __restrict v3, int64_t tw) {
  for (int64_t tx = 0; tx < tw; ++tx) {
    const float a = t[2 * tx - 1], b = t[2 * tx], c = t[2 * tx + 1], e = t[2 * tx + 2];
    v0[tx] = a - c;
    v1[tx] = b + c;
    v2[tx] = c - b;
    v3[tx] = b - e;
  }
}

// V[xi][ci][(ty - ty0) * tw + tx] = (B^T d B)[r][c] for input channels [c0, c1) and tile rows [ty0, ty1): the
// four input rows 2ty - 1 .. 2ty + 2 (zero outside the image) combine into rows t_r, then each t_r's columns
// likewise. V's planes are vs floats apart; `rows` holds 4 * (W + 2) floats (t_r with a zero column each side).
NFD_CPU_MULTIVERSION
static void winograd_input(const float* x, int64_t H, int64_t W, int64_t ty0, int64_t ty1, float* V, int64_t vs,
                           int64_t c0, int64_t c1, float* rows, const float* zeros) {
  const int64_t tw = W / 2, T = (ty1 - ty0) * tw;
  float* t[4];
  for (int r = 0; r < 4; ++r) {
    t[r] = rows + r * (W + 2) + 1;
    t[r][-1] = t[r][W] = 0.f;
  }
  for (int64_t ci = c0; ci < c1; ++ci)
    for (int64_t ty = ty0; ty < ty1; ++ty) {
      const float* d[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t iy = 2 * ty - 1 + k;
        d[k] = iy >= 0 && iy < H ? x + (ci * H + iy) * W : zeros;
      }
      winograd_rows(d[0], d[1], d[2], d[3], t[0], t[1], t[2], t[3], W);
      for (int r = 0; r < 4; ++r) {
        float* v = V + r * 4 * vs + ci * T + (ty - ty0) * tw;  // V[4r + c] at v + c * vs
        winograd_columns(t[r], v, v + vs, v + 2 * vs, v + 3 * vs, tw);
      }
    }
}

// One row of tiles: A^T m A (+ bias, + residual) into output rows o0, o1 (2 tw columns each). m holds the 16
// products of the row's tiles, m[xi * stride + tx].
template <bool kResidual>
NFD_CPU_INLINE void winograd_output_row(const float* __restrict m, int64_t stride, float bv,
                                       const float* __restrict r0, const float* __restrict r1,
                                       float* __restrict o0, float* __restrict o1, int64_t tw) {
  for (int64_t tx = 0; tx < tw; ++tx) {
    float s[4], d[4];  // A^T down the columns: s = m0 + m1 + m2, d = m1 - m2 - m3
    for (int c = 0; c < 4; ++c) {
      s[c] = m[c * stride + tx] + m[(4 + c) * stride + tx] + m[(8 + c) * stride + tx];
      d[c] = m[(4 + c) * stride + tx] - m[(8 + c) * stride + tx] - m[(12 + c) * stride + tx];
    }
    float y00 = s[0] + s[1] + s[2] + bv, y01 = s[1] - s[2] - s[3] + bv;
    float y10 = d[0] + d[1] + d[2] + bv, y11 = d[1] - d[2] - d[3] + bv;
    if (kResidual) {  // residual + conv, the order of the reference's skip + h
      y00 = r0[2 * tx] + y00;
      y01 = r0[2 * tx + 1] + y01;
      y10 = r1[2 * tx] + y10;
      y11 = r1[2 * tx + 1] + y11;
    }
    o0[2 * tx] = y00;
    o0[2 * tx + 1] = y01;
    o1[2 * tx] = y10;
    o1[2 * tx + 1] = y11;
  }
}

// out[co] for output channels [c0, c1) and tile rows [ty0, ty1) from M[xi][co][(ty - ty0) * tw + tx].
NFD_CPU_MULTIVERSION
static void winograd_output(const float* M, int64_t ms, int64_t H, int64_t W, int64_t ty0, int64_t ty1,
                            const float* bias, const float* residual, float* out, int64_t c0, int64_t c1) {
  const int64_t tw = W / 2, T = (ty1 - ty0) * tw;
  for (int64_t co = c0; co < c1; ++co)
    for (int64_t ty = ty0; ty < ty1; ++ty) {
      const float* m = M + co * T + (ty - ty0) * tw;
      const float bv = bias ? bias[co] : 0.f;
      float* o0 = out + (co * H + 2 * ty) * W;
      if (residual) {
        const float* r0 = residual + (co * H + 2 * ty) * W;
        winograd_output_row<true>(m, ms, bv, r0, r0 + W, o0, o0 + W, tw);
      } else {
        winograd_output_row<false>(m, ms, bv, nullptr, nullptr, o0, o0 + W, tw);
      }
    }
}

// The image is done in bands of tile rows whose V and M fit in kBandFloats: scratch stays bounded at any frame
// size (nfd-130m's 224x384 decoder would otherwise need ~180 MB) and a band's V and M stay in cache between the
// transforms and the GEMMs. tiny's 64x64 levels are one band.
static void conv3x3_winograd(const Context& ctx, const float* x, const float* w, const float* bias,
                             const float* residual, int64_t Cin, int64_t Cout, int64_t H, int64_t W, float* out) {
  const int64_t th = H / 2, tw = W / 2;
  const int64_t band_rows = std::max<int64_t>(1, std::min(th, kBandFloats / (16 * (Cin + Cout) * tw)));
  const int64_t Tmax = band_rows * tw;
  // The 16 planes of U, V and M are each skewed by 16 floats: at plane sizes that are multiples of 4 KiB (most
  // of them), 16 streams one plane apart all fall into the same L1 cache set and evict one another.
  const int64_t us = Cout * Cin + 16, vs = Cin * Tmax + 16, ms = Cout * Tmax + 16;
  float* U = scratch(size_t(16 * (us + vs + ms) + W));
  float* V = U + 16 * us;
  float* M = V + 16 * vs;
  float* zeros = M + 16 * ms;
  std::fill(zeros, zeros + W, 0.f);
  winograd_weights(w, Cout * Cin, U, us);
  ::nfd::cpu::set_blas_threads(1);
  for (int64_t ty0 = 0; ty0 < th; ty0 += band_rows) {
    const int64_t ty1 = std::min(th, ty0 + band_rows), T = (ty1 - ty0) * tw;
    ::nfd::cpu::parallel_for(ctx.threads, Cin, [&](int64_t c0, int64_t c1) {
      winograd_input(x, H, W, ty0, ty1, V, vs, c0, c1, scratch(size_t(4 * (W + 2)), 1), zeros);
    }, ::nfd::cpu::grain_for(16 * T));
    ::nfd::cpu::parallel_for(ctx.threads, 16, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi)
        NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(T), int(Cin), 1.f,
                          U + xi * us, int(Cin), V + xi * vs, int(T), 0.f, M + xi * ms, int(T));
    }, ::nfd::cpu::grain_for(Cout * Cin * T));
    ::nfd::cpu::parallel_for(ctx.threads, Cout, [&](int64_t c0, int64_t c1) {
      winograd_output(M, ms, H, W, ty0, ty1, bias, residual, out, c0, c1);
    }, ::nfd::cpu::grain_for(16 * T));
  }
}

static void conv2d_linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride,
                          int pad, Tensor& out, const Tensor* residual) {
  const int64_t Cout = w.dim(0), Cin = w.dim(1), k = w.dim(2);
  const int64_t H = x.dim(1), W = x.dim(2), Ho = out.dim(1), Wo = out.dim(2);
  const bool res = residual && residual->defined();

  if (k == 3 && stride == 1 && pad == 1 && Cout <= kDirectMaxCout) {
    // Bands of output rows; each gets a zero-bordered copy of the input rows it reads (band + 2 rows).
    const int64_t Wp = W + 2;
    const int64_t band_rows = std::max<int64_t>(1, std::min(H, kBandFloats / (Cin * Wp) - 2));
    const int64_t plane = (band_rows + 2) * Wp;
    float* padded = scratch(size_t(Cin * plane));
    const float* xs = x.ptr<float>();
    const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
    const float* rs = res ? residual->ptr<float>() : nullptr;
    for (int64_t y0 = 0; y0 < H; y0 += band_rows) {
      const int64_t y1 = std::min(H, y0 + band_rows);
      for (int64_t ci = 0; ci < Cin; ++ci)
        for (int64_t r = 0; r < y1 - y0 + 2; ++r) {  // padded row r = image row y0 - 1 + r
          float* dst = padded + ci * plane + r * Wp;
          const int64_t iy = y0 - 1 + r;
          if (iy < 0 || iy >= H) {
            std::fill(dst, dst + Wp, 0.f);
            continue;
          }
          dst[0] = dst[W + 1] = 0.f;
          std::copy(xs + (ci * H + iy) * W, xs + (ci * H + iy + 1) * W, dst + 1);
        }
      ::nfd::cpu::parallel_for(ctx.threads, y1 - y0, [&](int64_t r0, int64_t r1) {
        conv3x3_few_outputs(padded, plane, y0, w.ptr<float>(), b, rs, Cin, H, W, Cout, out.ptr<float>(), y0 + r0,
                            y0 + r1);
      }, ::nfd::cpu::grain_for(Cout * Cin * 9 * Wo));
    }
    return;
  }
  if (k == 3 && stride == 1 && pad == 1 && H % 2 == 0 && W % 2 == 0 && H * W >= kWinogradMinPixels) {
    conv3x3_winograd(ctx, x.ptr<float>(), w.ptr<float>(), bias.defined() ? bias.ptr<float>() : nullptr,
                     res ? residual->ptr<float>() : nullptr, Cin, Cout, H, W, out.ptr<float>());
    return;
  }
  // im2col + GEMM, in bands of output rows whose columns fit in kBandFloats (at least one row), so scratch stays
  // bounded at any image size. A 1x1 stride-1 convolution reads x directly, in one band.
  const int64_t P = Ho * Wo, KK = Cin * k * k;
  const bool direct_read = k == 1 && stride == 1 && pad == 0;
  const int64_t band_rows = direct_read ? Ho : std::max<int64_t>(1, std::min(Ho, kBandFloats / (KK * Wo)));
  float* col_buf = direct_read ? nullptr : scratch(size_t(KK * band_rows * Wo));
  const float* xs = x.ptr<float>();
  float* o = out.ptr<float>();
  const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
  const float* rs = res ? residual->ptr<float>() : nullptr;
  ::nfd::cpu::set_blas_threads(1);
  for (int64_t y0 = 0; y0 < Ho; y0 += band_rows) {
    const int64_t y1 = std::min(Ho, y0 + band_rows), BP = (y1 - y0) * Wo, q0 = y0 * Wo;
    if (!direct_read) {
      ::nfd::cpu::parallel_for(ctx.threads, KK, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ci = r / (k * k), ky = (r / k) % k, kx = r % k;
          float* dst = col_buf + r * BP;
          // Output columns whose input column lies inside the image: ox in [lo, hi).
          const int64_t lo = std::min(Wo, std::max<int64_t>(0, (pad - kx + stride - 1) / stride));
          const int64_t hi = std::max(lo, std::min(Wo, (W + pad - kx + stride - 1) / stride));
          for (int64_t oy = y0; oy < y1; ++oy, dst += Wo) {
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
      }, ::nfd::cpu::grain_for(BP));
    }
    // Threads split the band's output pixels: a single-threaded sgemm per block of columns, then bias and
    // residual.
    ::nfd::cpu::parallel_for(ctx.threads, BP, [&](int64_t i0, int64_t i1) {
      const int64_t p0 = q0 + i0, p1 = q0 + i1;
      // Columns: x itself ([KK, P]) when read directly, else the band's im2col buffer ([KK, BP]).
      const float* col = direct_read ? xs + p0 : col_buf + i0;
      NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(p1 - p0), int(KK), 1.f,
                        w.ptr<float>(), int(KK), col, int(direct_read ? P : BP), 0.f, o + p0, int(P));
      if (!b && !rs) return;
      // One loop per case: a pointer tested inside the loop would become masked loads (see linear_cpu.cc).
      for (int64_t c = 0; c < Cout; ++c) {
        const float bc = b ? b[c] : 0.f;
        if (rs) {
          for (int64_t i = c * P + p0; i < c * P + p1; ++i) o[i] = rs[i] + (o[i] + bc);  // the reference's skip + h
        } else {
          for (int64_t i = c * P + p0; i < c * P + p1; ++i) o[i] += bc;
        }
      }
    }, ::nfd::cpu::grain_for(Cout * KK));
  }
}

// The activation (TAEHV's ReLU and clamp to [0, 1]) as a pass over the finished output, while it is still in cache
// for small images. NaN becomes 0 (the comparisons are false for it).
NFD_CPU_MULTIVERSION
static void activate_in_place(float* o, int64_t n, bool clamp01) {
  if (clamp01) {
    for (int64_t i = 0; i < n; ++i) o[i] = o[i] > 0.f ? (o[i] < 1.f ? o[i] : 1.f) : 0.f;
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = o[i] > 0.f ? o[i] : 0.f;
  }
}

void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
            Tensor& out, const Tensor* residual, Activation act) {
  if (cpu_bf16("conv2d", out)) {  // bf16 tensors, fp32 arithmetic (as_f32 in ops/cpu_common.h), one rounding
    const Tensor xf = as_f32(x, 2), wf = as_f32(w, 3), bf = as_f32(bias, 4);
    const Tensor rf = residual ? as_f32(*residual, 5) : Tensor{};
    Tensor of = as_f32(out, 6, false);
    cpu::conv2d(ctx, xf, wf, bf, stride, pad, of, rf.defined() ? &rf : nullptr, act);
    return narrow_into(of, out);
  }
  conv2d_linear(ctx, x, w, bias, stride, pad, out, residual);
  if (act == Activation::none) return;
  float* o = out.ptr<float>();
  const bool clamp01 = act == Activation::clamp01;
  ::nfd::cpu::parallel_for(ctx.threads, out.numel(), [&](int64_t i0, int64_t i1) {
    activate_in_place(o + i0, i1 - i0, clamp01);
  }, ::nfd::cpu::grain_for(64));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
