// CPU test of the CUDA kernels' tile math (ops/attention_math.h, core/philox.h), compiled without nvcc:
// online-softmax push/merge against a direct softmax, RoPE angles, bf16 rounding, Philox known answers.
// Prints "N passed, N failed"; exit code 1 on failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/philox.h"
#include "ops/attention_math.h"

using namespace nfd;
static int g_pass = 0, g_fail = 0;
static void expect(bool ok, const char* what, double detail = 0) {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %-60s %.3e\n", ok ? "PASS" : "FAIL", what, detail);
}

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 3.f);
  // Online softmax over 3 partials (one empty) merged pairwise == direct softmax-weighted average.
  {
    const int n = 300;
    std::vector<float> s(n), v(n);
    for (int i = 0; i < n; ++i) s[i] = nd(rng), v[i] = nd(rng);
    double mx = -1e300, l = 0, o = 0;
    for (float x : s) mx = std::max(mx, double(x));
    for (int i = 0; i < n; ++i) l += std::exp2(s[i] - mx), o += std::exp2(s[i] - mx) * v[i];
    const double ref = o / l;
    const int cut[4] = {0, 120, 120, n};  // partial 1 is empty
    tile::SoftmaxState parts[3];
    float acc[3];
    for (int p = 0; p < 3; ++p) {
      parts[p] = tile::softmax_empty();
      acc[p] = 0.f;
      for (int i = cut[p]; i < cut[p + 1]; ++i) {
        float w;
        float corr = tile::softmax_push(parts[p], s[i], &w);
        acc[p] = acc[p] * corr + w * v[i];
      }
    }
    tile::SoftmaxState run = tile::softmax_empty();
    float o_run = 0.f;
    for (int p = 0; p < 3; ++p) {
      float wa, wb;
      float lsum = tile::softmax_merge_weights(run, parts[p], &wa, &wb);
      o_run = wa * o_run + wb * acc[p];
      run.m = std::max(run.m, parts[p].l > 0 ? parts[p].m : -INFINITY);
      run.l = lsum;
    }
    const double err = std::fabs(o_run / run.l - ref) / std::fabs(ref);
    expect(err < 1e-5, "online softmax push + 3-way merge (one empty) == direct", err);
    float wa, wb;
    expect(tile::softmax_merge_weights(tile::softmax_empty(), tile::softmax_empty(), &wa, &wb) == 0.f && wa == 0.f &&
               wb == 0.f,
           "merge of two empty partials is empty");
  }
  // Chunked moments (GroupNorm's statistics over several blocks): chunks' two-pass statistics merged pairwise ==
  // one two-pass over all values in double, for values with a large offset (where sum-of-squares would cancel)
  // and uneven chunk sizes, one of them empty.
  {
    const int64_t n = 10753;
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = 1000.f + nd(rng) / 3.f;
    double mean = 0, m2 = 0;
    for (float v : x) mean += v;
    mean /= double(n);
    for (float v : x) m2 += (v - mean) * (v - mean);
    const int chunks = 7;
    tile::MomentState run{0.f, 0.f, 0.f};
    bool covered = true;
    int64_t next = 0;
    for (int c = -1; c < chunks; ++c) {
      int64_t b = 0, e = 0;  // c = -1: an empty chunk first
      if (c >= 0) tile::chunk_range(n, chunks, c, &b, &e);
      covered = covered && (c < 0 || b == next);
      if (c >= 0) next = e;
      float s = 0.f;
      for (int64_t i = b; i < e; ++i) s += x[size_t(i)];
      const float cm = e > b ? s / float(e - b) : 0.f;
      float cm2 = 0.f;
      for (int64_t i = b; i < e; ++i) cm2 += (x[size_t(i)] - cm) * (x[size_t(i)] - cm);
      run = tile::moments_merge(run, tile::MomentState{float(e - b), cm, cm2});
    }
    const double var = m2 / double(n), var_merged = double(run.m2) / double(run.n);
    const double err = std::fabs(var_merged - var) / var + std::fabs(run.mean - mean) / 1000.0;
    expect(covered && next == n && run.n == float(n) && err < 1e-4,
           "chunked mean/variance merged == two-pass (offset 1000, 7 chunks + 1 empty)", err);
  }
  // RoPE angles: part boundaries and frequencies (dims 8/12/12, theta 1e4).
  {
    const int dims[3] = {8, 12, 12};
    double e0 = std::fabs(tile::rope_angle(0, dims, 1e4, 7, 2, 3) - 7.0);
    double e1 = std::fabs(tile::rope_angle(3, dims, 1e4, 7, 2, 3) - 7.0 * std::pow(1e4, -6.0 / 8));
    double e2 = std::fabs(tile::rope_angle(4, dims, 1e4, 7, 2, 3) - 2.0);
    double e3 = std::fabs(tile::rope_angle(10, dims, 1e4, 7, 2, 3) - 3.0);
    double e4 = std::fabs(tile::rope_angle(15, dims, 1e4, 7, 2, 3) - 3.0 * std::pow(1e4, -10.0 / 12));
    expect(e0 + e1 + e2 + e3 + e4 < 1e-15, "rope_angle time/row/col parts", e0 + e1 + e2 + e3 + e4);
  }
  // bf16 round-to-nearest-even.
  {
    bool ok = tile::round_bf16(1.0f) == 1.0f && tile::round_bf16(1.00390625f) == 1.0f /* tie -> even */ &&
              tile::round_bf16(1.01171875f) == 1.015625f /* tie -> even (up) */ &&
              tile::round_bf16(1.0040f) == 1.0078125f && std::isnan(tile::round_bf16(NAN)) &&
              std::isinf(tile::round_bf16(INFINITY)) && tile::round_bf16(-2.5f) == -2.5f;
    expect(ok, "bf16 round to nearest even, NaN, inf");
  }
  // Philox known answers (Random123 kat_vectors) and a Box-Muller sanity check.
  {
    philox::U32x4 c{{0, 0, 0, 0}};
    philox::U32x4 w = philox::philox4x32_10(c, 0, 0);
    expect(w.v[0] == 0x6627e8d5u && w.v[1] == 0xe169c58du && w.v[2] == 0xbc57ac4cu && w.v[3] == 0x9b00dbd8u,
           "philox4x32_10(0, 0) known answer");
    philox::U32x4 c2{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}};
    philox::U32x4 w2 = philox::philox4x32_10(c2, 0xa4093822u, 0x299f31d0u);
    expect(w2.v[0] == 0xd16cfe09u && w2.v[1] == 0x94fdccebu && w2.v[2] == 0x5001e420u && w2.v[3] == 0x24126ea1u,
           "philox4x32_10(pi digits) known answer");
    double mean = 0, var = 0;
    const int n = 40000;
    for (int e = 0; e < n; ++e) {
      double z = philox::normal(42, 3, 1, e);
      mean += z;
      var += z * z;
    }
    mean /= n;
    var = var / n - mean * mean;
    expect(std::fabs(mean) < 0.02 && std::fabs(var - 1) < 0.03, "philox normals: mean 0, variance 1",
           std::fabs(var - 1));
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
