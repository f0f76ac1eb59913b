// ops::gated_add_layernorm_modulate on CUDA (contract checked in ops/gated_add_layernorm_modulate.cc).
// One warp per row, the row in registers: each lane loads 8 consecutive elements per 256-element chunk with
// 16-byte loads (D % 8 == 0, D <= 2048, 16-byte aligned rows; nfd-310m: D = 1024, 4 chunks), adds the gated
// branch and stores y, then takes the mean and the centred variance from the registers (two exact passes
// without re-reading memory) by warp shuffles, and writes out. The separate ops read the row three times in a
// block per row with two block reductions; this reads x and y once and saves the gated_add kernel.
// Rounding as the separate ops: y rounded to the dtype as it is stored, the norm over the stored values.
// Other shapes, and NFD_RT_FUSED_NORM=off (the path measured before this kernel existed): ops::gated_add then
// ops::layernorm_modulate.
#include "core/switches.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
constexpr int kMaxChunks = 8;  // 8 x 256 elements: D <= 2048
constexpr int kRowsPerBlock = 8;

// 8 elements as one 16-byte access: 4 pairs of a 16-bit dtype, or two float4 for fp32.
template <typename T> struct Pair;  // a 16-bit dtype's 2-element vector and its fp32 conversions
template <> struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_f2(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ type from_f2(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <> struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_f2(type v) { return __half22float2(v); }
  static __device__ __forceinline__ type from_f2(float a, float b) { return __floats2half2_rn(a, b); }
};
template <typename T> struct Vec8 {
  using P = Pair<T>;
  static __device__ __forceinline__ void load(const T* p, float* f) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const typename P::type* h = reinterpret_cast<const typename P::type*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 t = P::to_f2(h[k]);
      f[2 * k] = t.x, f[2 * k + 1] = t.y;
    }
  }
  static __device__ __forceinline__ void store(T* p, const float* f) {
    uint4 u;
    typename P::type* h = reinterpret_cast<typename P::type*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) h[k] = P::from_f2(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  }
};
template <> struct Vec8<float> {
  static __device__ __forceinline__ void load(const float* p, float* f) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
  static __device__ __forceinline__ void store(float* p, const float* f) {
    reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
  }
};

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    gated_add_layernorm_modulate_kernel(const T* x, const T* gate, T* y, const T* shift, const T* scale, float eps,
                                        T* out, int M, int D, bool rms) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= M) return;  // warp-uniform
  const int64_t base = int64_t(row) * D;
  float v[kMaxChunks][8];
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int e = (c * 32 + lane) * 8;
    if (e >= D) break;
    float xv[8], gv[8];
    Vec8<T>::load(x + base + e, xv);
    Vec8<T>::load(y + base + e, v[c]);
    Vec8<T>::load(gate + e, gv);
#pragma unroll
    for (int i = 0; i < 8; ++i)  // y + g * x without FMA contraction, as ops::linear's gated residual
      v[c][i] = cudaops::to_f<T>(cudaops::from_f<T>(__fadd_rn(v[c][i], __fmul_rn(gv[i], xv[i]))));
    Vec8<T>::store(y + base + e, v[c]);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += v[c][i];
  }
  const float mean = rms ? 0.f : cudaops::warp_sum(sum) / D;  // the RMSNorm: mean 0, var = mean of squares
  float var = 0.f;
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    if ((c * 32 + lane) * 8 >= D) break;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float d = v[c][i] - mean;
      var += d * d;
    }
  }
  const float rstd = rsqrtf(cudaops::warp_sum(var) / D + eps);
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int e = (c * 32 + lane) * 8;
    if (e >= D) break;
    float sh[8], sc[8], o[8];
    Vec8<T>::load(shift + e, sh);
    Vec8<T>::load(scale + e, sc);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = (v[c][i] - mean) * rstd * (1.f + sc[i]) + sh[i];
    Vec8<T>::store(out + base + e, o);
  }
}

template <typename T>
void launch(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y, const Tensor& shift,
            const Tensor& scale, float eps, Tensor& out, int M, int D, bool rms) {
  gated_add_layernorm_modulate_kernel<T><<<unsigned((M + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0,
                                           cudaops::stream_of(ctx)>>>(
      static_cast<const T*>(x.data), static_cast<const T*>(gate.data), static_cast<T*>(y.data),
      static_cast<const T*>(shift.data), static_cast<const T*>(scale.data), eps, static_cast<T*>(out.data), M, D, rms);
  cudaops::check_launch("gated_add_layernorm_modulate");
}
}  // namespace

void cuda::gated_add_layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y,
                                        const Tensor& shift, const Tensor& scale, float eps, Tensor& out, Norm norm) {
  const int64_t M = y.dim(0), D = y.dim(1);
  if (M == 0 || D == 0) return;
  const bool rms = norm == Norm::rms;
  bool fits = switch_on("NFD_RT_FUSED_NORM") && D % 8 == 0 && D <= 256 * kMaxChunks && M < (int64_t(1) << 31);
  for (const Tensor* t : {&x, &gate, static_cast<const Tensor*>(&y), &shift, &scale, static_cast<const Tensor*>(&out)})
    fits = fits && cudaops::aligned16(t->data);
  if (!fits) {
    cuda::gated_add(ctx, x, gate, y);
    cuda::layernorm_modulate(ctx, y, shift, scale, eps, out, 1.f, norm);
    return;
  }
  switch (y.dtype) {
    case DType::bf16: return launch<__nv_bfloat16>(ctx, x, gate, y, shift, scale, eps, out, int(M), int(D), rms);
    case DType::f16: return launch<__half>(ctx, x, gate, y, shift, scale, eps, out, int(M), int(D), rms);
    default: return launch<float>(ctx, x, gate, y, shift, scale, eps, out, int(M), int(D), rms);
  }
}

}  // namespace ops
}  // namespace nfd
