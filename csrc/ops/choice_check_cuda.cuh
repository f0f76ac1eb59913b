// Checked choices: an engine timed at session open must also compute the right thing on this GPU before it can be
// kept (docs/cuda-backend.md, "Checked choices"). Each candidate runs once on seeded random inputs of the real
// shape, and its output is compared with a reference kernel's on the same inputs; one that disagrees (a mis-set
// stride, a vendor kernel's bug on this architecture, a tile that never ran on a GPU like this one) is left out
// with what it got wrong, so the session runs the fastest engine that is right, not the fastest one.
// NFD_RT_CHECK_CHOICES=off times without checking.
#pragma once

#include <cfloat>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "core/switches.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace cudaops {

// Engines are measured one shape at a time in the process, held from the "measured before?" lookup to the
// store of the choice: two sessions opening on two threads would otherwise time their candidates against each
// other's kernels and, for cuBLASLt, tune the same shared plan at once. Recursive, so that a measurement that ever
// prepares another op cannot deadlock on itself.
inline std::recursive_mutex& measure_mutex() {
  static std::recursive_mutex m;
  return m;
}

// A hash of (seed, i) mapped to [-1, 1): the same values on every GPU and every run (splitmix64's finaliser).
__device__ __forceinline__ float hash_uniform(uint32_t seed, uint64_t i) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + ((uint64_t(seed) << 32) | seed);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

template <typename T>
__global__ void fill_uniform_kernel(T* p, int64_t n, uint32_t seed, float scale) {
  NFD_GRID_STRIDE(i, n) p[i] = from_f<T>(scale * hash_uniform(seed, uint64_t(i)));
}

// max |a - b| (b null: max |a|) into *worst, as the bits of a non-negative float (their order as unsigned is the
// floats' order); a NaN or Inf on either side counts as +Inf.
template <typename T>
__global__ void max_abs_diff_kernel(const T* a, const T* b, int64_t n, unsigned* worst) {
  float m = 0.f;
  NFD_GRID_STRIDE(i, n) {
    const float d = fabsf(to_f<T>(a[i]) - (b ? to_f<T>(b[i]) : 0.f));
    m = d <= FLT_MAX ? fmaxf(m, d) : INFINITY;  // NaN fails the comparison too
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(worst, __float_as_uint(m));
}

// n values of p: scale * uniform [-1, 1), from seed.
template <typename T>
void fill_uniform(T* p, int64_t n, uint32_t seed, float scale, cudaStream_t s) {
  fill_uniform_kernel<T><<<grid_1d(n, 256), 256, 0, s>>>(p, n, seed, scale);
  check_launch("checked choice: seeded inputs");
}

// max |a - b| over n values (b null: max |a|; +Inf when either holds a NaN or Inf); synchronises s.
template <typename T>
float max_abs_diff(const T* a, const T* b, int64_t n, cudaStream_t s) {
  Scratch worst(sizeof(unsigned), s);
  check(cudaMemsetAsync(worst.get<void>(), 0, sizeof(unsigned), s), "cudaMemsetAsync (checked choice)");
  const unsigned blocks = grid_1d(n, 256) < 1024u ? grid_1d(n, 256) : 1024u;
  max_abs_diff_kernel<T><<<blocks, 256, 0, s>>>(a, b, n, worst.get<unsigned>());
  check_launch("checked choice: comparison");
  unsigned bits = 0;
  check(cudaMemcpyAsync(&bits, worst.get<void>(), sizeof bits, cudaMemcpyDeviceToHost, s),
        "cudaMemcpyAsync (checked choice)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (checked choice)");
  float worst_diff;
  std::memcpy(&worst_diff, &bits, sizeof worst_diff);
  return worst_diff;
}

inline bool choice_check_on() { return switch_on("NFD_RT_CHECK_CHOICES"); }

// The GPU harness's hook (tests/cuda/test_ops_cuda.cu): NFD_RT_CHOICE_CHECK_BREAK=<text> spoils the checked output
// of each candidate whose label contains <text> ("all": every candidate), as a wrong kernel would.
inline bool spoiled_for_test(const std::string& label) {
  const char* e = std::getenv("NFD_RT_CHOICE_CHECK_BREAK");
  return e && *e && (std::strcmp(e, "all") == 0 || label.find(e) != std::string::npos);
}

// The check of one candidate's output `got` (n values) against the reference's `want`: "" when every value is
// within tol, else what it got wrong.
template <typename T>
std::string verdict(T* got, const T* want, int64_t n, float tol, const std::string& label, cudaStream_t s) {
  if (spoiled_for_test(label)) fill_uniform(got, n, 99, 1.f, s);
  const float worst = max_abs_diff(got, want, n, s);
  if (worst <= tol && worst <= FLT_MAX) return "";  // a NaN or Inf (worst = +Inf) fails whatever the limit
  char buf[128];
  std::snprintf(buf, sizeof buf, "wrong result: max |diff| %.3g against the reference kernel (limit %.3g)", worst,
                tol);
  return buf;
}

// The limit for an engine whose values scale with its operands (a GEMM, a convolution): 2% of the reference's
// largest magnitude, computed once for all candidates. A right 16-bit engine differs by a rounding or two there
// (0.4-0.8% in bf16); a wrong tap, tile, split or workspace by about the values themselves.
template <typename T>
float relative_limit(const T* want, int64_t n, cudaStream_t s) {
  const float limit = 0.02f * max_abs_diff<T>(want, nullptr, n, s);
  return limit > 1e-6f ? limit : 1e-6f;
}

// Tensor t's shape and dtype on the memory of m (the check's own copy of an operand).
inline Tensor on_scratch(const Tensor& t, const Scratch& m) {
  Tensor v = t;
  v.data = m.get<void>();
  return v;
}

// While alive, each cudaops::Scratch taken on this thread starts as NaN (cuda_common.cuh): a checked candidate's
// partials and workspaces cannot inherit the right values of the one before.
class PoisonScratch {
 public:
  PoisonScratch() : was_(t_poison_scratch) { t_poison_scratch = true; }
  ~PoisonScratch() { t_poison_scratch = was_; }
  PoisonScratch(const PoisonScratch&) = delete;
  PoisonScratch& operator=(const PoisonScratch&) = delete;

 private:
  bool was_;
};

// A candidate's failure (in the check or in its timing) that left the CUDA context broken: nothing after it can run
// in this process, so session open stops here, naming the candidate and what turns it off, instead of going on to
// blame the next candidate for the sticky error.
[[noreturn]] inline void fail_context_lost(const std::string& where, const std::string& label, const char* what) {
  fail(ErrorKind::internal, where + ": " + label + " broke the CUDA context (" + what +
                                "); no CUDA call can succeed in this process after it. Turn that engine off with its "
                                "switch (docs/cuda-backend.md, \"Checked choices\") and open the session again");
}

// Called in the catch handler of a candidate's run (`where` names the choice, `label` the candidate) or of a whole
// check (no label). Rethrows what no choice may absorb: a host out of memory, and, when the failure left the CUDA
// context broken, ends session open naming the candidate (fail_context_lost; a whole check's error already names
// it). Returns when the failure was the candidate's own and cleared: the candidate is left out.
inline void after_candidate_failure(cudaStream_t s, const std::exception& e, const std::string& where = "",
                                    const std::string& label = "") {
  if (dynamic_cast<const std::bad_alloc*>(&e)) throw;
  if (!context_lost(s)) return;
  if (label.empty()) throw;
  fail_context_lost(where, label, e.what());
}

// One run of a candidate being checked: its output (`bytes` at `out`) and every scratch it takes start as all-ones
// bytes (a NaN in fp32, bf16 and fp16), so one that leaves some of them unwritten cannot pass.
template <typename Run>
void run_poisoned(void* out, size_t bytes, cudaStream_t s, Run run) {
  check(cudaMemsetAsync(out, 0xff, bytes, s), "cudaMemsetAsync (checked choice)");
  PoisonScratch poisoned;
  run();
}

// Runs each of n candidates once (run(i) writes its output into `got`; run_poisoned) and judges it against `want`
// within tol. Returns per candidate "" or what it got wrong; a candidate whose launch throws "failed in the check:
// ...". One that breaks the CUDA context ends session open (after_candidate_failure).
template <typename T, typename Run, typename Label>
std::vector<std::string> check_each(size_t n, const Tensor& got, const Tensor& want, float tol, cudaStream_t s,
                                    Run run, Label label_of) {
  std::vector<std::string> wrong(n);
  for (size_t i = 0; i < n; ++i) {
    try {
      run_poisoned(got.data, got.bytes(), s, [&] { run(i); });
      wrong[i] = verdict(got.ptr<T>(), want.ptr<T>(), got.numel(), tol, label_of(i), s);
    } catch (const std::exception& e) {  // nfd::Error, or a vendor library's own exception
      after_candidate_failure(s, e, "checked choice", label_of(i));
      wrong[i] = std::string("failed in the check: ") + e.what();
    }
  }
  return wrong;
}

}  // namespace cudaops
}  // namespace nfd
