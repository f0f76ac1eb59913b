// What the CPU ops (ops/*_cpu.cc) share: the dtype check (fp32, or bf16 where the CPU has it), bf16 storage,
// scratch memory, norm statistics, vector helpers.
// The argument checks of each op are its contract, in ops/NAME.cc.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "backends/cpu/device_cpu.h"
#include "backends/cpu/onednn.h"
#include "backends/cpu/parallel.h"
#include "core/error.h"
#include "ops/ops.h"

namespace nfd {
namespace ops {
namespace cpu_detail {

// The CPU backend's own limit, checked by each CPU op: it computes in fp32, and in bf16 where this build has
// oneDNN and the CPU has AVX512-BF16 or AMX (backends/cpu/onednn.h). Returns whether the op runs in bf16. (The
// contract, ops/NAME.cc, has already made every float operand share `t`'s dtype.)
inline bool cpu_bf16(const char* op, const Tensor& t) {
  if (t.dtype == DType::f32) return false;
  if (t.dtype == DType::bf16) {
    const ::nfd::cpu::Bf16Support& s = ::nfd::cpu::bf16_support();
    NFD_CHECK(s.ok, unsupported,
              std::string("ops::") + op + ": the CPU backend computes in fp32, and in bf16 only on CPUs with " +
                  "AVX512-BF16 or AMX: " + s.why + "; got " + t.describe());
    return true;
  }
  fail(ErrorKind::unsupported,
       std::string("ops::") + op + ": the CPU backend computes in fp32 or bf16, got " + t.describe());
}

// bf16 values as the CPU stores them: the upper half of a float's bits. Widening is exact; narrowing rounds to
// nearest even (NaN stays NaN), the rounding of PyTorch's .to(torch.bfloat16). Plain integer code, so loops over
// it vectorise for any target and round alike on every copy.
using bf16_t = uint16_t;
__attribute__((always_inline)) inline float to_float(float v) { return v; }
__attribute__((always_inline)) inline float to_float(bf16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
__attribute__((always_inline)) inline T from_float(float v);
template <>
__attribute__((always_inline)) inline float from_float<float>(float v) {
  return v;
}
template <>
__attribute__((always_inline)) inline bf16_t from_float<bf16_t>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return bf16_t((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

// Per-thread scratch buffer of at least n floats (reused across calls: no allocation per frame once warm).
// 64-byte aligned on every thread: a vector loop's peeled head depends on its pointer's alignment, and a chunk
// must compute the same bits whichever thread runs it (backends/cpu/parallel.h).
// The bytes held by all threads' buffers are counted (now and at most), so tests can hold the memory estimate's
// scratch bound (ops/scratch_bound.h) against what the ops really take.
struct ScratchCounters {
  std::atomic<size_t> now{0}, peak{0};
};
inline ScratchCounters& scratch_counters() {
  static ScratchCounters c;
  return c;
}
class ScratchBuffer {
 public:
  ~ScratchBuffer() { release(); }
  float* get(size_t n) {
    if (floats_ < n) {
      release();
      const size_t bytes = (std::max<size_t>(n, 16) * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      floats_ = n;
      bytes_ = bytes;
      ScratchCounters& c = scratch_counters();
      const size_t now = c.now.fetch_add(bytes) + bytes;
      size_t peak = c.peak.load();
      while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {
      }
    }
    return data_;
  }

 private:
  void release() {
    if (!data_) return;
    std::free(data_);
    scratch_counters().now.fetch_sub(bytes_);
    data_ = nullptr;
    floats_ = bytes_ = 0;
  }
  float* data_ = nullptr;
  size_t floats_ = 0, bytes_ = 0;
};
// which: 0 and 1 for the kernels, 2 to 6 for bf16 operands and results as fp32 (as_f32 below).
inline float* scratch(size_t n, int which = 0) {
  static thread_local ScratchBuffer buffers[7];
  return buffers[which].get(n);
}

// Mean and 1/sqrt(var + eps) of n values (biased variance, two passes): the statistics of LayerNorm rows and
// GroupNorm groups. Each block of 256 values is summed in float over 8 independent lanes (a loop the compiler
// vectorises), the block sums in double: the rounding of a block is ~32 float additions, the total is exact
// enough for the 1e-5 parity tolerance at any n.
struct NormStats {
  float mean, rstd;
};
template <typename T>
inline double blocked_sum(const T* x, int64_t n, float shift, bool square) {
  double total = 0;
  for (int64_t b = 0; b < n; b += 256) {
    const int64_t e = std::min<int64_t>(n, b + 256);
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      for (int j = 0; j < 8; ++j) {
        const float d = to_float(x[i + j]) - shift;
        lane[j] += square ? d * d : d;
      }
    double block = 0;
    for (int j = 0; j < 8; ++j) block += lane[j];
    for (; i < e; ++i) {
      const double d = double(to_float(x[i])) - shift;
      block += square ? d * d : d;
    }
    total += block;
  }
  return total;
}
// The RMSNorm's statistics: mean 0 and 1/sqrt(mean(x^2) + eps), the same blocked sums.
template <typename T>
inline NormStats rms_stats(const T* x, int64_t n, float eps) {
  const double ms = blocked_sum(x, n, 0.f, true) / double(n);
  return {0.f, float(1.0 / std::sqrt(ms + double(eps)))};
}
template <typename T>
inline NormStats norm_stats(const T* x, int64_t n, float eps) {
  const double mean = blocked_sum(x, n, 0.f, false) / double(n);
  const double var = blocked_sum(x, n, float(mean), true) / double(n);
  return {float(mean), float(1.0 / std::sqrt(var + double(eps)))};
}

// bf16 operands as fp32, for ops that run their fp32 algorithm on bf16 tensors (the VAE's convolutions: a few
// percent of a frame, whose fp32 paths Winograd and phase folding make fast): as_f32 gives an fp32 tensor of t's
// shape in this thread's scratch slot `which` (2 to 6), holding t's values when `values` (exact), or t itself when
// t is fp32 or undefined; narrow_into rounds such a result into the bf16 output.
inline Tensor as_f32(const Tensor& t, int which, bool values = true) {
  if (!t.defined() || t.dtype == DType::f32) return t;
  const int64_t n = t.numel();
  float* dst = scratch(size_t(n), which);
  if (values) {
    const bf16_t* src = t.ptr<bf16_t>();
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
  }
  return Tensor{dst, DType::f32, t.device, t.shape};
}
inline void narrow_into(const Tensor& f32, Tensor& out) {
  if (f32.data == out.data) return;
  const float* src = f32.ptr<float>();
  bf16_t* dst = out.ptr<bf16_t>();
  for (int64_t i = 0, n = out.numel(); i < n; ++i) dst[i] = from_float<bf16_t>(src[i]);
}

// The wheel is built for plain x86-64 (SSE2), so the hot element loops are compiled three times, for
// x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline, and the loader picks the best one the CPU runs
// (GCC function multi-versioning). Put this on a function holding plain loops: the compiler vectorises each
// copy for its target. Results agree across copies to float rounding (FMA contraction), not bit for bit.
// NFD_RT_CPU_LEVEL (a testing build, CMake -DNFD_RT_CPU_LEVEL=x86-64-v3) compiles one level only.
#if defined(NFD_RT_CPU_LEVEL) && defined(__x86_64__) && defined(__GNUC__)
#define NFD_CPU_ONE_LEVEL 1
#define NFD_CPU_MULTIVERSION __attribute__((target(NFD_RT_CPU_LEVEL)))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NFD_RT_NO_MULTIVERSION)
#define NFD_CPU_CLONES 1
#define NFD_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NFD_CPU_MULTIVERSION
#endif

// Which copy of the NFD_CPU_MULTIVERSION loops runs on this CPU (what GCC's loader picks), for `nfd-rt env`
// and the benchmark's environment record.
inline std::string cpu_kernel_level() {
#if defined(NFD_CPU_ONE_LEVEL)
  return std::string(NFD_RT_CPU_LEVEL + 5) + " only (an NFD_RT_CPU_LEVEL test build)";  // + 5: skip "arch="
#elif defined(NFD_CPU_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "one portable copy (multi-versioning off or not available)";
#endif
}

// 16 floats as two halves of 8 (one AVX2 register each, an AVX-512 target uses two ymm registers). Where a
// loop's accumulators must stay in registers (a chain through memory makes every FMA wait on the store of the
// one before), kernels spell out Vec16 arithmetic instead of leaving plain loops to the vectoriser. It is not a
// 64-byte vector type: GCC keeps those in memory on AVX2 targets, so every FMA of the attention kernel went
// through the stack (20x slower on an AVX2-only CPU than the same code on AVX-512).
typedef float Vec8 __attribute__((vector_size(32)));
struct Vec16 {
  Vec8 lo, hi;
};
#define NFD_VEC16_INLINE __attribute__((always_inline)) inline
// A helper of an NFD_CPU_MULTIVERSION kernel: always inlined, so it is compiled for the caller's target. A helper
// GCC chose not to inline ran as the baseline (SSE2, no FMA) copy: conv_out's direct kernel was 30% of a decode.
#define NFD_CPU_INLINE __attribute__((always_inline)) inline
NFD_VEC16_INLINE Vec16 operator+(Vec16 a, Vec16 b) { return {a.lo + b.lo, a.hi + b.hi}; }
NFD_VEC16_INLINE Vec16 operator+(Vec16 a, float s) { return {a.lo + s, a.hi + s}; }
NFD_VEC16_INLINE Vec16& operator+=(Vec16& a, Vec16 b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
NFD_VEC16_INLINE Vec16 operator*(float s, Vec16 v) { return {s * v.lo, s * v.hi}; }
NFD_VEC16_INLINE Vec16 operator*(Vec16 v, float s) { return {v.lo * s, v.hi * s}; }
NFD_VEC16_INLINE Vec16 vmax(Vec16 a, Vec16 b) { return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi}; }
NFD_VEC16_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v.lo, p, sizeof v.lo);
  std::memcpy(&v.hi, p + 8, sizeof v.hi);
  return v;
}
NFD_VEC16_INLINE void store16(float* p, Vec16 v) {
  std::memcpy(p, &v.lo, sizeof v.lo);
  std::memcpy(p + 8, &v.hi, sizeof v.hi);
}
NFD_VEC16_INLINE Vec16 operator*(Vec16 a, Vec16 b) { return {a.lo * b.lo, a.hi * b.hi}; }
// 16 bf16 values widened into fp32 lanes (exact: a bf16 is a float's upper half).
NFD_VEC16_INLINE Vec16 load16(const bf16_t* p) {
  typedef uint16_t U16x8 __attribute__((vector_size(16)));
  typedef uint32_t U32x8 __attribute__((vector_size(32)));
  U16x8 a, b;
  std::memcpy(&a, p, sizeof a);
  std::memcpy(&b, p + 8, sizeof b);
  const U32x8 lo = __builtin_convertvector(a, U32x8) << 16, hi = __builtin_convertvector(b, U32x8) << 16;
  Vec16 v;
  std::memcpy(&v.lo, &lo, sizeof v.lo);
  std::memcpy(&v.hi, &hi, sizeof v.hi);
  return v;
}
// The 16 lanes summed in a fixed order (lane 0 first): the same bits on every thread.
NFD_VEC16_INLINE float sum16(Vec16 v) {
  float lane[16];
  store16(lane, v);
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += lane[i];
  return s;
}

// exp(x) written so that a loop calling it vectorises (glibc's expf is a call per element): k = round(x / ln2)
// by the 1.5 * 2^23 trick, r = x - k ln2 in two parts (|r| <= ln2 / 2), a degree-6 Taylor polynomial of exp(r)
// (relative error ~1e-7), times 2^k built in the exponent bits. x is clamped to [-87, 88] so 2^k stays a
// normal float: exp(-87) ~ 1.6e-38 stands in for 0 and every caller's result still rounds correctly.
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float k = (x * 1.44269504f + 12582912.f) - 12582912.f;
  const float r = (x - k * 0.693145752f) - k * 1.42860677e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const uint32_t bits = uint32_t(int32_t(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return p * two_k;
}

// SiLU v * sigmoid(v), through exp_approx so that loops calling it vectorise.
inline float silu(float v) { return v / (1.f + exp_approx(-v)); }

// The exact GELU v / 2 (1 + erf(v / sqrt 2)), written so that a loop calling it vectorises (glibc's erff is a
// call per element): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), for z = |v| / sqrt 2 (Numerical Recipes'
// erfcc, fractional error < 1.2e-7; through exp_approx). For v >= 0, 1 + erf = 2 - erfc; for v < 0, 1 + erf(z) =
// erfc(|z|), so the small tail keeps its relative accuracy.
NFD_CPU_INLINE float gelu_erf(float v) {
  const float z = (v < 0.f ? -v : v) * 0.70710678118654752f;
  const float t = 1.f / (1.f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float erfc = t * exp_approx(-z * z + p);
  return 0.5f * v * (v < 0.f ? erfc : 2.f - erfc);
}

// Scratch budget of one band when an op works through a large image in bands of rows (about 4 MiB): bounded
// memory at any frame size, and a band's buffers stay in cache between its steps.
constexpr int64_t kBandFloats = int64_t(1) << 20;

}  // namespace cpu_detail
}  // namespace ops
}  // namespace nfd
