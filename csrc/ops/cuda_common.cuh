// Shared helpers of the CUDA op kernels (ops/*_cuda.cu): error checks, dtype-generic loads/stores, launch
// helpers and stream-ordered scratch memory. Only included from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/ops.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace cudaops {

// Every CUDA error becomes an nfd::Error carrying cudaGetErrorString's text (never an abort).
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are not blamed for it
    fail(e == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
         std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
  }
}
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// After a failed call on stream s: clears an error that can be cleared and says whether one stays. A kernel that
// faults (an illegal address, a trap) leaves a sticky error: every later CUDA call of the process fails with it, so
// nothing after it can be judged, only the kernel that caused it named.
inline bool context_lost(cudaStream_t s) {
  cudaStreamSynchronize(s);
  cudaGetLastError();
  return cudaStreamSynchronize(s) != cudaSuccess || cudaGetLastError() != cudaSuccess;
}

inline cudaStream_t stream_of(const Context& ctx) { return static_cast<cudaStream_t>(ctx.stream); }

// 16-byte alignment: what cp.async, ldmatrix and the 16-byte vector loads of the kernels need of a pointer.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A pointer plus its dtype: memory-bound kernels convert on load/store with a warp-uniform switch, so any mix
// of f32/bf16/f16 tensors works without a template instantiation per combination.
struct DPtr {
  void* p;
  DType t;
};
inline DPtr dp(const Tensor& t) { return DPtr{t.data, t.dtype}; }

__device__ __forceinline__ float ld(const DPtr& a, int64_t i) {
  switch (a.t) {
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(a.p)[i]);
    case DType::f16: return __half2float(static_cast<const __half*>(a.p)[i]);
    case DType::u8: return float(static_cast<const uint8_t*>(a.p)[i]);
    case DType::i32: return float(static_cast<const int32_t*>(a.p)[i]);
    default: return static_cast<const float*>(a.p)[i];
  }
}
__device__ __forceinline__ void st(const DPtr& a, int64_t i, float v) {
  switch (a.t) {
    case DType::bf16: static_cast<__nv_bfloat16*>(a.p)[i] = __float2bfloat16_rn(v); break;
    case DType::f16: static_cast<__half*>(a.p)[i] = __float2half_rn(v); break;
    case DType::u8: static_cast<uint8_t*>(a.p)[i] = uint8_t(v); break;
    case DType::i32: static_cast<int32_t*>(a.p)[i] = int32_t(v); break;
    default: static_cast<float*>(a.p)[i] = v; break;
  }
}

// Typed conversions for the templated (GEMM / attention) kernels.
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

inline unsigned grid_1d(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  return unsigned(g < 1 ? 1 : (g > (1 << 30) ? (1 << 30) : g));
}
#define NFD_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// Stream-ordered scratch memory (cudaMallocAsync / cudaFreeAsync): legal inside CUDA graph capture, where it
// becomes memory-alloc/free nodes, so ops that need a workspace stay graph-capturable without a plan step.
// While a candidate engine is checked at open (PoisonScratch, ops/choice_check_cuda.cuh), every scratch starts as
// all-ones bytes (a NaN in fp32, bf16 and fp16): stream-ordered memory freed by the candidate before is handed out
// again, so partials a broken kernel leaves unwritten would otherwise hold its predecessor's right values.
inline thread_local bool t_poison_scratch = false;
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t s) : s_(s) {
    if (!bytes) return;
    check(cudaMallocAsync(&p_, bytes, s), "cudaMallocAsync (op scratch)");
    if (!t_poison_scratch) return;
    const cudaError_t e = cudaMemsetAsync(p_, 0xff, bytes, s);
    if (e != cudaSuccess) {
      cudaFreeAsync(p_, s);
      p_ = nullptr;
      check(e, "cudaMemsetAsync (checked choice scratch)");
    }
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, s_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T> T* get() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  cudaStream_t s_;
};

// Milliseconds per call of `run` on stream s: 2 warm-up calls, then the best of 3 timings of 5 calls each.
template <typename F>
float time_ms(cudaStream_t s, F run) {
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "cudaEventCreate");
  check(cudaEventCreate(&e1), "cudaEventCreate");
  float best = 1e30f;
  try {
    run();
    run();
    for (int rep = 0; rep < 3; ++rep) {
      check(cudaEventRecord(e0, s), "cudaEventRecord");
      for (int i = 0; i < 5; ++i) run();
      check(cudaEventRecord(e1, s), "cudaEventRecord");
      check(cudaEventSynchronize(e1), "cudaEventSynchronize");
      float ms = 0.f;
      check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
      best = std::min(best, ms / 5.f);
    }
  } catch (...) {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    throw;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* sh /* >= 33 floats */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read from a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float t = lane < nw ? sh[lane] : 0.f;
  t = warp_sum(t);
  return t;
}

}  // namespace cudaops
}  // namespace nfd
