// ops::upsample2x_conv2d on the CPU (contract checked in ops/upsample2x_conv2d.cc) without building the upsampled
// image.
//
// A 3x3 convolution of a nearest-2x-upsampled image reads, for output pixel (2y+py, 2x+px), only the input
// rows y-1+py .. y+py and columns x-1+px .. x+px: the three kernel rows collapse onto two input rows ({0} and
// {1,2} for py = 0, {0,1} and {2} for py = 1), same for columns. So each of the four output phases (py, px)
// is a 2x2 convolution of the small image with summed weights: 4 taps instead of 9 per output, 2.25x fewer
// FLOPs, and the GEMMs run on the small image. Zero padding matches: an input row outside [0, H) is exactly
// an upsampled row outside [0, 2H).
#include "backends/cpu/blas.h"

#include <algorithm>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

// Folded weights: phase_w[ph][co][(ci, a, b)] = the sum of w[co][ci][ky][kx] over the kernel taps that output
// phase ph = (py, px) reads through its tap (a, b). Rows first: py = 0 folds kernel rows {0}, {1, 2}; py = 1
// folds {0, 1}, {2}; then the columns alike. Straight-line code per (co, ci): with loops over tap ranges this
// took 150 us per call for 64 -> 64 channels, as long as the convolution itself on a 16x16 image.
NFD_CPU_MULTIVERSION
static void fold_phase_weights(const float* __restrict w, int64_t pairs, float* __restrict phase_w) {
  for (int64_t n = 0; n < pairs; ++n) {  // n = co * Cin + ci
    const float* k = w + n * 9;
    float rows[2][2][3];  // [py][a][kx]
    for (int kx = 0; kx < 3; ++kx) {
      rows[0][0][kx] = k[kx];
      rows[0][1][kx] = k[3 + kx] + k[6 + kx];
      rows[1][0][kx] = k[kx] + k[3 + kx];
      rows[1][1][kx] = k[6 + kx];
    }
    for (int py = 0; py < 2; ++py)
      for (int px = 0; px < 2; ++px) {
        float* dst = phase_w + (int64_t(py * 2 + px) * pairs + n) * 4;
        for (int a = 0; a < 2; ++a) {
          const float* r = rows[py][a];
          dst[a * 2 + 0] = px == 0 ? r[0] : r[0] + r[1];
          dst[a * 2 + 1] = px == 0 ? r[1] + r[2] : r[2];
        }
      }
  }
}

void upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  if (cpu_bf16("upsample2x_conv2d", out)) {  // bf16 tensors, fp32 arithmetic (as_f32 in ops/cpu_common.h)
    const Tensor xf = as_f32(x, 2), wf = as_f32(w, 3), bf = as_f32(bias, 4);
    Tensor of = as_f32(out, 6, false);
    upsample2x_conv2d(ctx, xf, wf, bf, of);
    return narrow_into(of, out);
  }
  const int64_t Cout = w.dim(0), Cin = w.dim(1);
  const int64_t H = x.dim(1), W = x.dim(2), K = Cin * 4;

  const float* wt = w.ptr<float>();
  const float* xs = x.ptr<float>();
  const float* bs = bias.defined() ? bias.ptr<float>() : nullptr;
  float* o = out.ptr<float>();
  // Bands of input rows whose phase buffers fit in kBandFloats: bounded scratch at any frame size.
  const int64_t band_rows = std::max<int64_t>(1, std::min(H, kBandFloats / (4 * (K + Cout) * W)));
  const int64_t Pmax = band_rows * W;
  float* buf = scratch(size_t(4 * K * Pmax + 4 * Cout * Pmax + 4 * Cout * K));
  float* phase_col = buf;                      // [phase][Cin*4][band pixels]
  float* phase_out = phase_col + 4 * K * Pmax;  // [phase][Cout][band pixels]
  float* phase_w = phase_out + 4 * Cout * Pmax;  // [phase][Cout][Cin*4]
  fold_phase_weights(wt, Cout * Cin, phase_w);
  ::nfd::cpu::set_blas_threads(1);
  for (int64_t y0 = 0; y0 < H; y0 += band_rows) {
    const int64_t y1 = std::min(H, y0 + band_rows), P = (y1 - y0) * W;
    // Phase im2col on the small image: row (ci, a, b) of phase (py, px) holds
    // x[ci, y + a - 1 + py, x + b - 1 + px].
    ::nfd::cpu::parallel_for(ctx.threads, 4 * K, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int ph = int(r / K), py = ph >> 1, px = ph & 1;
        const int64_t ci = (r % K) / 4;
        const int a = int(r % 4) / 2, b = int(r % 2);
        const int64_t dy = a - 1 + py, dx = b - 1 + px;
        float* dst = phase_col + r * P;
        for (int64_t y = y0; y < y1; ++y, dst += W) {
          const int64_t iy = y + dy;
          if (iy < 0 || iy >= H) {
            std::fill(dst, dst + W, 0.f);
            continue;
          }
          const float* row = xs + (ci * H + iy) * W;
          const int64_t lo = std::max<int64_t>(0, -dx), hi = std::min<int64_t>(W, W - dx);
          std::fill(dst, dst + lo, 0.f);
          std::copy(row + lo + dx, row + hi + dx, dst + lo);
          std::fill(dst + hi, dst + W, 0.f);
        }
      }
    }, ::nfd::cpu::grain_for(P));
    // Four GEMMs [Cout, K] @ [K, P], threads splitting (phase, column block).
    ::nfd::cpu::parallel_for(ctx.threads, 4 * P, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {
        const int64_t ph = i / P, p0 = i % P, p1 = std::min(P, p0 + (i1 - i));
        NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(p1 - p0), int(K), 1.f,
                          phase_w + ph * Cout * K, int(K), phase_col + ph * K * P + p0, int(P), 0.f,
                          phase_out + ph * Cout * P + p0, int(P));
        i += p1 - p0;
      }
    }, ::nfd::cpu::grain_for(Cout * K));
    // Interleave the phases into out[co, 2y + py, 2x + px] and add the bias.
    const int64_t rows = y1 - y0;
    ::nfd::cpu::parallel_for(ctx.threads, Cout * rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t co = r / rows, y = y0 + r % rows;
        const float bv = bs ? bs[co] : 0.f;
        for (int py = 0; py < 2; ++py) {
          float* dst = o + (co * 2 * H + 2 * y + py) * 2 * W;
          const float* even = phase_out + (int64_t(py * 2) * Cout + co) * P + (y - y0) * W;
          const float* odd = phase_out + (int64_t(py * 2 + 1) * Cout + co) * P + (y - y0) * W;
          for (int64_t xx = 0; xx < W; ++xx) {
            dst[2 * xx] = even[xx] + bv;
            dst[2 * xx + 1] = odd[xx] + bv;
          }
        }
      }
    }, ::nfd::cpu::grain_for(4 * W));
  }
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
