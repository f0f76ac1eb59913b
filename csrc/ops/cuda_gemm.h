// The 16-bit GEMM engines of the CUDA backend. Behind ops::linear (ops/linear_cuda.cu): CUTLASS 2.x (always
// built) and cuBLASLt (ops/linear_cuda_cublaslt.cu, built when cublasLt.h is found: NFD_RT_WITH_CUBLASLT; the library is
// opened at run time). Both compute y[M,N] = x[M,K] w[N,K]^T (+ bias[N]) (then GELU(tanh)) with fp32
// accumulation, bf16 or fp16 everywhere, row-major, 16-byte aligned, K and N multiples of 8.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>

#include "core/tensor.h"
#include "ops/ops.h"

namespace nfd {
namespace ops {
namespace cuda_detail {

// The tensor-core convolution of ops::conv2d and ops::upsample2x_conv2d (ops/conv2d_cuda.cu): CUTLASS's NHWC
// implicit GEMM between two transposes, for bf16/fp16 with Cin % 8 == 0 (eligible()). upsample2x folds the 2x
// nearest upsampling of x into the NHWC transpose (then x is the low-resolution image and out is 2H x 2W).
bool conv2d_implicit_gemm_eligible(const Tensor& x);
void conv2d_implicit_gemm(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride,
                          int pad, bool upsample2x, Tensor& out, const Tensor* residual);
// Its scratch and index maps: ops/conv2d_layout.h.

void cutlass_gemm(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                  cudaStream_t s);

#ifdef NFD_RT_WITH_CUBLASLT
// True once libcublasLt.so.13 is loaded and a handle exists (tried once per process; see cublaslt_status()).
bool cublaslt_available();
// Why cuBLASLt is or is not available: the library path that was loaded, or what failed.
std::string cublaslt_status();
// Runs the GEMM through cuBLASLt: the algorithm from cublasLtMatmulAlgoGetHeuristic (asked once per shape and
// cached: the first offered, or the fastest once cublaslt_tune timed them), bias / GELU+bias epilogues fused, the workspace the algorithm needs (<= 32 MiB) from stream-ordered
// scratch (a memory node inside a captured graph). Returns false when cuBLASLt is unavailable or has no
// algorithm for the problem (nothing was launched); throws nfd::Error when a launch fails.
bool cublaslt_gemm(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                   cudaStream_t s, std::string* algo_note = nullptr);
// Loads cuBLASLt and asks the heuristic for the shape's algorithms, outside any capture (NFD_RT_GEMM=cublaslt's
// linear_prepare: the first cublaslt_gemm of the shape may then run inside the frame graph's capture). False when
// cuBLASLt is unavailable or has no algorithm (the calls then run CUTLASS and say why).
bool cublaslt_plan(DType t, bool gelu, int M, int N, int K, const void* bias);
// Times every algorithm the heuristic offers for the shape (up to 8, split-K ones included) and keeps the fastest
// for later cublaslt_gemm calls; returns its time in ms (-1: cuBLASLt unavailable or no algorithm). With `check`,
// each algorithm's output y is first given to it ("" when right, else what is wrong: the algorithm is left out, as
// one that fails to launch). Not inside a capture: it synchronises the stream (called at session open by
// ops::linear_prepare).
float cublaslt_tune(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                    cudaStream_t s, std::string* algo_note = nullptr,
                    const std::function<std::string(void* y)>& check = nullptr);
#endif

}  // namespace cuda_detail
}  // namespace ops
}  // namespace nfd
