// CUDA attention, the CUDA-core family ("simt": flash-decoding; fp32 always runs here).
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {

// CUDA-core kernel (fp32, and any dtype on request).
constexpr int kSBQ = 32, kTPQ = 4, kSBK = 32, kSThreads = kSBQ * kTPQ;

template <typename T, int HD>
__global__ void __launch_bounds__(kSThreads) attention_simt_kernel(AttnArgs a) {
  constexpr int DPT = HD / kTPQ;  // dims per thread
  __shared__ float Ks[kSBK][HD];
  __shared__ float Vs[kSBK][HD];
  __shared__ int slot_of[FrameState::kMaxSlots];
  __shared__ bool live[kSBK];  // key of the tile in range with a valid slot

  const int h = blockIdx.y, split = blockIdx.z;
  const int qi = threadIdx.x / kTPQ, sub = threadIdx.x % kTPQ;
  const int n = blockIdx.x * kSBQ + qi;
  const int N = a.N, H = a.H;
  const int nvis = load_slot_list(a.state, a.slots, slot_of);
  const int64_t L = int64_t(nvis) * N;
  int64_t chunk = (L + a.splits - 1) / a.splits;
  chunk = (chunk + kSBK - 1) / kSBK * kSBK;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = k_begin + chunk < L ? k_begin + chunk : L;

  const T* qp = static_cast<const T*>(a.q);
  float qr[DPT], acc[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    // Interleaved dims (sub + 4i): the 4 threads of a query read 4 consecutive shared words (no bank conflict).
    qr[i] = n < N ? cudaops::to_f(qp[(int64_t(h) * N + n) * HD + sub + kTPQ * i]) * a.scale_log2 : 0.f;
    acc[i] = 0.f;
  }
  tile::SoftmaxState st = tile::softmax_empty();
  const T* kp = static_cast<const T*>(a.k);
  const T* vp = static_cast<const T*>(a.v);
  __syncthreads();  // slot_of ready

  for (int64_t t0 = k_begin; t0 < k_end; t0 += kSBK) {
    for (int e = threadIdx.x; e < kSBK * HD; e += kSThreads) {
      const int kk = e / HD, d = e % HD;
      const int64_t key = t0 + kk;
      float kv = 0.f, vv = 0.f;
      bool ok = false;
      if (key < k_end) {
        const int slot = slot_of[key / N];
        ok = slot >= 0;
        if (ok) {
          const int64_t off = tile::mma::kv_offset(slot, int(key % N), N, a.Hkv, h / (H / a.Hkv), HD) + d;
          kv = cudaops::to_f(kp[off]);
          vv = cudaops::to_f(vp[off]);
        }
      }
      Ks[kk][d] = kv;
      Vs[kk][d] = vv;
      if (d == 0) live[kk] = ok;
    }
    __syncthreads();
    float s[kSBK];
    float m_tile = -INFINITY;
#pragma unroll
    for (int kk = 0; kk < kSBK; ++kk) {
      float p = 0.f;
#pragma unroll
      for (int i = 0; i < DPT; ++i) p += qr[i] * Ks[kk][sub + kTPQ * i];
      p += __shfl_xor_sync(0xffffffffu, p, 1);
      p += __shfl_xor_sync(0xffffffffu, p, 2);
      s[kk] = live[kk] ? p : -INFINITY;
      m_tile = fmaxf(m_tile, s[kk]);
    }
    const float m_new = fmaxf(st.m, m_tile);
    if (m_new != -INFINITY) {  // a tile of only masked keys changes nothing
      const float corr = exp2f(st.m - m_new);
      st.l *= corr;
#pragma unroll
      for (int i = 0; i < DPT; ++i) acc[i] *= corr;
#pragma unroll
      for (int kk = 0; kk < kSBK; ++kk) {
        const float p = exp2f(s[kk] - m_new);
        st.l += p;
#pragma unroll
        for (int i = 0; i < DPT; ++i) acc[i] += p * Vs[kk][sub + kTPQ * i];
      }
      st.m = m_new;
    }
    __syncthreads();
  }

  if (n >= N) return;
  const float inv = st.l > 0.f ? 1.f / st.l : 0.f;
  if (a.splits == 1) {
    T* op = static_cast<T*>(a.out);
#pragma unroll
    for (int i = 0; i < DPT; ++i)
      op[int64_t(n) * H * HD + h * HD + sub + kTPQ * i] = cudaops::from_f<T>(acc[i] * inv);
  } else {
    const int64_t row = (int64_t(split) * H + h) * N + n;
#pragma unroll
    for (int i = 0; i < DPT; ++i) a.part.o[row * HD + sub + kTPQ * i] = acc[i] * inv;
    if (sub == 0) a.part.lse[row] = tile::mma::lse_log2(st.m, st.l);
  }
}

}  // namespace
}  // namespace ops
}  // namespace nfd
