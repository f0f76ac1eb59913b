// ops::attention with keys = same_token on CUDA (the Oasis DiT's temporal attention): query (n, h) attends to token
// n of each visible slot, num_visible keys (a few dozen). One warp per (token, head): each lane holds up to 8 of
// the head's dims, a key's score is a warp sum, the softmax is online in fp32 (running max and sum). The slot list
// is read on the device (a captured graph serves every fill level); a slot outside the cache is skipped.
// Unverified on a GPU (compiled for sm_80/sm_90; the CPU backend is its oracle in tests/test_ops.py).
#pragma once

#include <cmath>

#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace same_token {

constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256
constexpr int kWarps = 4;

__global__ void kernel(cudaops::DPtr q, cudaops::DPtr kc, cudaops::DPtr vc, cudaops::DPtr out, int N, int H,
                       int Hkv, int hd, int slots, float scale, const FrameState* state) {
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // t = n * H + h
  if (t >= int64_t(N) * H) return;
  const int n = int(t / H), h = int(t % H);
  float qd[kMaxDimsPerLane], acc[kMaxDimsPerLane];
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    qd[i] = d < hd ? cudaops::ld(q, (int64_t(h) * N + n) * hd + d) : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int visible = min(max(state->num_visible, 0), FrameState::kMaxSlots);  // as the other kernels clamp it
  for (int j = 0; j < visible; ++j) {
    const int slot = state->visible_slots[j];
    if (slot < 0 || slot >= slots) continue;
    const int64_t row = ((int64_t(slot) * N + n) * Hkv + h / (H / Hkv)) * hd;
    float s = 0.f;
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) s += qd[i] * cudaops::ld(kc, row + d);
    }
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    s *= scale;
    const float m_new = fmaxf(m, s), corr = __expf(m - m_new), p = __expf(s - m_new);
    l = l * corr + p;
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < hd ? p * cudaops::ld(vc, row + d) : 0.f);
    }
    m = m_new;
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) cudaops::st(out, int64_t(n) * H * hd + int64_t(h) * hd + d, acc[i] * inv);
  }
}

inline void run(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out, const FrameState* state,
                cudaStream_t s) {
  using namespace cudaops;
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2));
  NFD_CHECK(hd <= 32 * kMaxDimsPerLane, unsupported,
            "ops::attention: head_dim " + std::to_string(hd) + ": the CUDA same_token kernel takes at most " +
                std::to_string(32 * kMaxDimsPerLane));
  const int64_t pairs = int64_t(N) * H;
  const unsigned blocks = unsigned((pairs + kWarps - 1) / kWarps);
  kernel<<<blocks, 32 * kWarps, 0, s>>>(dp(q), dp(k_cache), dp(v_cache), dp(out), N, H, int(k_cache.dim(2)), hd,
                                        int(k_cache.dim(0)),
                                        float(1.0 / std::sqrt(double(hd))), state);
  check_launch("attention (same_token)");
}

}  // namespace same_token
}  // namespace ops
}  // namespace nfd
