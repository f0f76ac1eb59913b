// oneDNN on the CPU: the matrix products of the bf16 CPU path (linear, attention's Q K^T and P V, the VAE's
// convolution GEMMs) and the large fp32 linears. oneDNN picks its kernels for the CPU at run time: AMX tiles where the CPU has AMX-BF16,
// AVX512-BF16 dot products otherwise; a CPU with neither gets no bf16 (bf16_support() says why).
//
// Determinism: every product runs on the calling thread alone (oneDNN's OpenMP threads are set to 1 for the call),
// on the sub-problem the caller's fixed chunk gives it (backends/cpu/parallel.h), so the bits do not depend on the
// thread count. Primitives are created once per problem (shape, strides, dtypes, epilogue) and kept for the process.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace nfd {
namespace cpu {

// Whether this build and this CPU compute bf16: `ok`, the instruction set oneDNN runs ("AMX-BF16",
// "AVX512-BF16"), and when not ok, why (no oneDNN in this build, or a CPU without bf16 dot products).
struct Bf16Support {
  bool ok = false;
  std::string isa;
  std::string why;
};
const Bf16Support& bf16_support();
// oneDNN's version ("3.2.0"), "" when this build has no oneDNN.
std::string onednn_version();
// Whether this build has oneDNN (its fp32 products run on any x86-64 CPU).
constexpr bool has_onednn() {
#ifdef NFD_RT_WITH_ONEDNN
  return true;
#else
  return false;
#endif
}

// C[M, N] (row stride ldc) = A[M, K] (lda) x B, then the epilogue, in fp32 (products accumulate in fp32).
// B is weights[N, K] (row stride ldb) transposed when `b_nk`, else B[K, N] (ldb).
// bias[N] and gate[N] have C's dtype. Epilogues: gelu_tanh / gelu_erf: C = gelu(AB + bias); silu: C = SiLU(AB +
// bias); gated: C += gate * (AB + bias).
struct Matmul {
  enum class Post { none, gelu_tanh, gelu_erf, silu, gated };
  int64_t M = 0, N = 0, K = 0, lda = 0, ldb = 0, ldc = 0;
  bool b_nk = false;
  DType a = DType::bf16, b = DType::bf16, c = DType::bf16;
  bool bias = false;
  Post post = Post::none;
};
void matmul(const Matmul& mm, const void* A, const void* B, void* C, const void* bias = nullptr,
            const void* gate = nullptr);
// matmul, unless oneDNN would run this product on its reference kernel (`ref:any`: plain loops, some 100x slower
// than its brgemm / jit kernels): then nothing runs and the result is false (one primitive lookup for both). It
// does so for some fused epilogues on some strides: the gated residual on a bf16 block of a wider C (Waypoint-1.5's
// 128 x 2048 linears cut into 128-column blocks) took 96% of a 245 s frame that way. Callers then ask for the bare
// product and apply the epilogue themselves.
bool matmul_unless_reference(const Matmul& mm, const void* A, const void* B, void* C, const void* bias = nullptr,
                             const void* gate = nullptr);

}  // namespace cpu
}  // namespace nfd
