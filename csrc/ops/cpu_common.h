// Argument checks and scratch memory shared by the CPU ops (ops/*_cpu.cc). The CPU backend is fp32 only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <string>
#include <vector>

#include "backends/cpu/parallel.h"
#include "core/error.h"
#include "ops/ops.h"

namespace nfd {
namespace ops {
namespace cpu_detail {

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// `t` must be defined, on the CPU, of dtype `dt`, with the given shape (-1 = any extent).
inline void expect(const char* op, const char* name, const Tensor& t, std::vector<int64_t> shape,
                   DType dt = DType::f32) {
  std::string where = std::string("ops::") + op + ": " + name;
  NFD_CHECK(t.defined(), invalid_argument, where + " is undefined");
  NFD_CHECK(t.device == Device::cpu, invalid_argument, where + " must be on the cpu, got " + t.describe());
  NFD_CHECK(t.dtype == dt, unsupported,
            where + " must be " + dtype_name(dt) + " (the CPU backend computes in fp32), got " + t.describe());
  bool ok = t.rank() == int(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == t.shape[i];
  NFD_CHECK(ok, invalid_argument, where + " must have shape " + shape_str(shape) + ", got " + t.describe());
}

inline const FrameState& state(const Context& ctx, const char* op) {
  NFD_CHECK(ctx.state != nullptr, invalid_argument, std::string("ops::") + op + ": Context has no FrameState");
  return *ctx.state;
}

// Per-thread scratch buffer of at least n floats (reused across calls: no allocation per frame once warm).
inline float* scratch(size_t n, int which = 0) {
  static thread_local std::vector<float> buffers[2];
  std::vector<float>& b = buffers[which];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// Mean and 1/sqrt(var + eps) of n values (biased variance, two passes): the statistics of LayerNorm rows and
// GroupNorm groups. Each block of 256 values is summed in float over 8 independent lanes (a loop the compiler
// vectorises), the block sums in double: the rounding of a block is ~32 float additions, the total is exact
// enough for the 1e-5 parity tolerance at any n.
struct NormStats {
  float mean, rstd;
};
inline double blocked_sum(const float* x, int64_t n, float shift, bool square) {
  double total = 0;
  for (int64_t b = 0; b < n; b += 256) {
    const int64_t e = std::min<int64_t>(n, b + 256);
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      for (int j = 0; j < 8; ++j) {
        const float d = x[i + j] - shift;
        lane[j] += square ? d * d : d;
      }
    double block = 0;
    for (int j = 0; j < 8; ++j) block += lane[j];
    for (; i < e; ++i) {
      const double d = double(x[i]) - shift;
      block += square ? d * d : d;
    }
    total += block;
  }
  return total;
}
inline NormStats norm_stats(const float* x, int64_t n, float eps) {
  const double mean = blocked_sum(x, n, 0.f, false) / double(n);
  const double var = blocked_sum(x, n, float(mean), true) / double(n);
  return {float(mean), float(1.0 / std::sqrt(var + double(eps)))};
}

// SiLU v * sigmoid(v).
inline float silu(float v) { return v / (1.f + std::exp(-v)); }

// out[i] = silu(x[i] * scale + shift) for i < n. The VAE applies SiLU to every activation, so this loop is hot;
// glibc's expf is a call per element that the compiler cannot vectorise, so on x86-64 four lanes at a time use
// SSE2 (always present there): exp by round(x / ln2) = k, r = x - k ln2 in two parts, a degree-6 Taylor
// polynomial of exp(r) (|r| <= ln2/2, relative error ~1e-7), times 2^k built in the exponent bits.
#if defined(__SSE2__)
inline __m128 exp_sse2(__m128 x) {
  x = _mm_min_ps(_mm_max_ps(x, _mm_set1_ps(-87.f)), _mm_set1_ps(88.f));  // 2^k stays a normal float
  const __m128 magic = _mm_set1_ps(12582912.f);                            // 1.5 * 2^23: rounds to nearest
  const __m128 k = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(1.44269504f)), magic), magic);
  const __m128 r = _mm_sub_ps(_mm_sub_ps(x, _mm_mul_ps(k, _mm_set1_ps(0.693145752f))),
                              _mm_mul_ps(k, _mm_set1_ps(1.42860677e-06f)));
  __m128 p = _mm_set1_ps(1.f / 720);
  for (float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(c));
  const __m128i e = _mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(k), _mm_set1_epi32(127)), 23);
  return _mm_mul_ps(p, _mm_castsi128_ps(e));
}
#endif
inline void scale_shift_silu(const float* x, float* out, int64_t n, float scale, float shift) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 s = _mm_set1_ps(scale), b = _mm_set1_ps(shift), one = _mm_set1_ps(1.f);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(x + i), s), b);
    const __m128 e = exp_sse2(_mm_sub_ps(_mm_setzero_ps(), v));
    _mm_storeu_ps(out + i, _mm_div_ps(v, _mm_add_ps(one, e)));
  }
#endif
  for (; i < n; ++i) out[i] = silu(x[i] * scale + shift);
}

}  // namespace cpu_detail
}  // namespace ops
}  // namespace nfd
