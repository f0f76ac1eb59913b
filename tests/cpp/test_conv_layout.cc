// CPU test of the CUDA tensor-core convolution's index maps (ops/conv2d_layout.h), compiled without nvcc.
// It runs the op's pipeline on the host: x[C, H, W] to the NHWC input (with the 2x nearest upsampling folded in
// for upsample2x_conv2d), w to zero-padded KRSC filters and biases, then CUTLASS's conv2d fprop as its
// reference defines it (cutlass/util/reference/host/convolution.h: cross-correlation over NHWC x KRSC, the
// epilogue's source C read through the layout, here a zero pixel stride so every pixel gets the biases), then
// back to [C, H, W] with the residual; and compares with a direct convolution in double. It also checks the
// scratch layout (aligned, disjoint, large enough), and the strided tensors cuDNN's convolution is given
// (image_strides, filter_strides) in both of its forms. What it cannot check: CUTLASS or cuDNN on the GPU itself
// (the op table's CUDA rows in tests/ops/test_ops.py do). Prints "N passed, N failed"; exit code 1 on failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "ops/conv2d_layout.h"

using namespace nfd::ops::conv_layout;
static int g_pass = 0, g_fail = 0;
static void expect(bool ok, const std::string& what, double detail = 0) {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %-64s %.3e\n", ok ? "PASS" : "FAIL", what.c_str(), detail);
}

struct Case {
  int cin, cout, h, w, k, stride, pad, up;
  bool bias, residual;
};

static void run(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  const int taps = c.k * c.k, hi = c.h << c.up, wi = c.w << c.up;
  const int ho = (hi + 2 * c.pad - c.k) / c.stride + 1, wo = (wi + 2 * c.pad - c.k) / c.stride + 1;
  const int co8 = padded_channels(c.cout);
  const int64_t P_x = int64_t(c.h) * c.w, P_in = int64_t(hi) * wi, P = int64_t(ho) * wo;
  std::vector<float> x(size_t(c.cin) * P_x), w(size_t(c.cout) * c.cin * taps), b(c.cout), res(size_t(c.cout) * P);
  for (auto* v : {&x, &w, &b, &res})
    for (float& e : *v) e = nd(rng);

  // 1. to_nhwc_kernel
  std::vector<float> xs(size_t(P_in) * c.cin);
  for (int64_t p = 0; p < P_in; ++p)
    for (int ch = 0; ch < c.cin; ++ch) xs[p * c.cin + ch] = x[ch * P_x + nhwc_source_pixel(p, wi, c.w, c.up)];
  // 2. filters_to_krsc_kernel
  const int64_t nw = int64_t(co8) * taps * c.cin;
  std::vector<float> wk(nw), b8(co8);
  for (int64_t i = 0; i < nw; ++i) {
    int o;
    const int64_t src = krsc_source(i, c.cin, taps, &o);
    wk[i] = o < c.cout ? w[src] : 0.f;
  }
  for (int o = 0; o < co8; ++o) b8[o] = c.bias && o < c.cout ? b[o] : 0.f;
  // 3. CUTLASS conv2d fprop (N = 1), alpha = beta = 1, C = b8 with strides (0, 0, 0)
  std::vector<double> prod(size_t(P) * co8);
  for (int p = 0; p < ho; ++p)
    for (int q = 0; q < wo; ++q)
      for (int kk = 0; kk < co8; ++kk) {
        double acc = 0;
        for (int r = 0; r < c.k; ++r)
          for (int s = 0; s < c.k; ++s) {
            const int hh = p * c.stride - c.pad + r, ww = q * c.stride - c.pad + s;
            if (hh < 0 || hh >= hi || ww < 0 || ww >= wi) continue;
            for (int ch = 0; ch < c.cin; ++ch)
              acc += double(xs[(int64_t(hh) * wi + ww) * c.cin + ch]) * wk[((int64_t(kk) * c.k + r) * c.k + s) * c.cin + ch];
          }
        prod[(int64_t(p) * wo + q) * co8 + kk] = acc + b8[kk];
      }
  // 4. from_nhwc_add_kernel, and the direct reference on the (upsampled) [C, H, W] image
  double err = 0, ref_max = 0;
  std::vector<double> refs(size_t(c.cout) * P);
  for (int o = 0; o < c.cout; ++o)
    for (int64_t pp = 0; pp < P; ++pp) {
      const double got = prod[pp * co8 + o] + (c.residual ? res[o * P + pp] : 0.0);
      const int y = int(pp / wo), xo = int(pp % wo);
      double ref = c.bias ? b[o] : 0.0;
      for (int ch = 0; ch < c.cin; ++ch)
        for (int r = 0; r < c.k; ++r)
          for (int s = 0; s < c.k; ++s) {
            const int hh = y * c.stride - c.pad + r, ww = xo * c.stride - c.pad + s;
            if (hh < 0 || hh >= hi || ww < 0 || ww >= wi) continue;
            ref += double(x[ch * P_x + int64_t(hh >> c.up) * c.w + (ww >> c.up)]) * w[(int64_t(o) * c.cin + ch) * taps + r * c.k + s];
          }
      if (c.residual) ref += res[o * P + pp];
      refs[o * P + pp] = ref;
      err = std::fmax(err, std::fabs(got - ref));
      ref_max = std::fmax(ref_max, std::fabs(ref));
    }
  char name[160];
  std::snprintf(name, sizeof name, "conv %d->%d %dx%d k%d s%d p%d%s%s%s", c.cin, c.cout, c.h, c.w, c.k, c.stride,
                c.pad, c.up ? " upsample2x" : "", c.bias ? " bias" : "", c.residual ? " +res" : "");
  expect(err <= 1e-9 * std::fmax(1.0, ref_max), name, err);

  // 5. cuDNN's convolution as ops/conv2d_cuda_cudnn.cc describes it: y[0, k, p, q] = bias[k] + sum over c, r, s of
  //    X[0, c, p*stride - pad + r, q*stride - pad + s] * W[k, c, r, s] (+ residual), every tensor read and written
  //    through the strides of image_strides / filter_strides: on our [C, H, W] memory (nchw; not for upsample2x) and
  //    on the NHWC buffers of steps 1-2 (nhwc: Co8 filters, the residual added by step 4).
  for (const bool nhwc : {false, true}) {
    if (!nhwc && c.up) continue;
    const float* X = nhwc ? xs.data() : x.data();
    const float* Wt = nhwc ? wk.data() : w.data();
    const int K = nhwc ? co8 : c.cout, ih = nhwc ? hi : c.h, iw = nhwc ? wi : c.w;
    const Strides4 xst = image_strides(nhwc, c.cin, ih, iw), wst = filter_strides(nhwc, c.cin, c.k);
    const Strides4 yst = image_strides(nhwc, K, ho, wo);
    std::vector<double> y(size_t(K) * P, std::nan(""));
    for (int kk = 0; kk < K; ++kk)
      for (int p = 0; p < ho; ++p)
        for (int q = 0; q < wo; ++q) {
          double acc = c.bias ? (nhwc ? b8[kk] : b[kk]) : 0.0;
          for (int ch = 0; ch < c.cin; ++ch)
            for (int r = 0; r < c.k; ++r)
              for (int s2 = 0; s2 < c.k; ++s2) {
                const int hh = p * c.stride - c.pad + r, ww = q * c.stride - c.pad + s2;
                if (hh < 0 || hh >= ih || ww < 0 || ww >= iw) continue;
                acc += double(X[ch * xst.s[1] + hh * xst.s[2] + ww * xst.s[3]]) *
                       Wt[kk * wst.s[0] + ch * wst.s[1] + r * wst.s[2] + s2 * wst.s[3]];
              }
          const int64_t at = kk * yst.s[1] + p * yst.s[2] + q * yst.s[3];
          if (!nhwc && c.residual) acc += res[at];  // the fused residual, read through y's strides
          y[at] = acc;
        }
    double e2 = 0;
    for (int o = 0; o < c.cout; ++o)
      for (int64_t pp = 0; pp < P; ++pp) {
        const int64_t at = o * yst.s[1] + (pp / wo) * yst.s[2] + (pp % wo) * yst.s[3];
        const double got = y[at] + (nhwc && c.residual ? res[o * P + pp] : 0.0);
        e2 = std::isnan(got) ? INFINITY : std::fmax(e2, std::fabs(got - refs[o * P + pp]));
      }
    expect(e2 <= 1e-9 * std::fmax(1.0, ref_max), std::string("cudnn ") + (nhwc ? "nhwc " : "nchw ") + name, e2);
  }

  // The scratch layout holds each part, aligned and disjoint.
  const ScratchLayout at(P_in, c.cin, P, c.cout, c.k, 2);
  const bool ok = at.xs % 256 == 0 && at.wk % 256 == 0 && at.b8 % 256 == 0 && at.prod % 256 == 0 &&
                  at.wk >= at.xs + P_in * c.cin * 2 && at.b8 >= at.wk + nw * 2 && at.prod >= at.b8 + co8 * 2 &&
                  at.total >= at.prod + P * co8 * 2;
  expect(ok, std::string("scratch layout of ") + name, double(at.total));
}

int main() {
  std::mt19937 rng(11);
  expect(padded_channels(3) == 8 && padded_channels(8) == 8 && padded_channels(9) == 16, "padded_channels");
  const Case cases[] = {
      {8, 16, 13, 11, 3, 1, 1, 0, true, true},   {16, 16, 13, 12, 3, 2, 1, 0, true, false},
      {16, 8, 9, 9, 1, 1, 0, 0, false, true},    {32, 3, 17, 23, 3, 1, 1, 0, true, false},  // conv_out: 3 of 8
      {16, 12, 7, 10, 3, 1, 1, 0, true, true},   {8, 8, 6, 5, 3, 1, 1, 1, true, false},     // upsample2x
      {16, 3, 5, 9, 3, 1, 1, 1, false, false},   {24, 40, 4, 4, 3, 1, 1, 1, true, false},
  };
  for (const Case& c : cases) run(c, rng);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
