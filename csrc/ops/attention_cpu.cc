// Attention of the current frame's queries over the visible cache slots: per (head, query) an online softmax
// that walks the slots one block of N keys at a time (fp32, the running max keeps exp() in range).
#include <cmath>
#include <limits>
#include <string>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out) {
  expect("attention", "q", q, {-1, -1, -1});
  const int64_t H = q.dim(0), N = q.dim(1), hd = q.dim(2);
  expect("attention", "k_cache", k_cache, {-1, H, N, hd});
  const int64_t slots = k_cache.dim(0);
  expect("attention", "v_cache", v_cache, {slots, H, N, hd});
  expect("attention", "out", out, {N, H * hd});
  const FrameState& st = state(ctx, "attention");
  NFD_CHECK(st.num_visible > 0 && st.num_visible <= FrameState::kMaxSlots, invalid_argument,
            "ops::attention: num_visible " + std::to_string(st.num_visible) + " out of range");
  for (int i = 0; i < st.num_visible; ++i)
    NFD_CHECK(st.visible_slots[i] >= 0 && st.visible_slots[i] < slots, invalid_argument,
              "ops::attention: visible slot " + std::to_string(st.visible_slots[i]) + " outside the cache");

  const float scale = float(1.0 / std::sqrt(double(hd)));
  const float* K = k_cache.ptr<float>();
  const float* V = v_cache.ptr<float>();
  float* O = out.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, H * N, [&](int64_t i0, int64_t i1) {
    float* s = scratch(size_t(N));
    float* acc = scratch(size_t(hd), 1);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / N, n = i % N;
      const float* qi = q.ptr<float>() + (h * N + n) * hd;
      float m = -std::numeric_limits<float>::infinity(), l = 0.f;
      for (int64_t d = 0; d < hd; ++d) acc[d] = 0.f;
      for (int b = 0; b < st.num_visible; ++b) {
        const int64_t base = (int64_t(st.visible_slots[b]) * H + h) * N * hd;
        float bm = m;
        for (int64_t j = 0; j < N; ++j) {
          const float* kj = K + base + j * hd;
          float dot = 0.f;
          for (int64_t d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          s[j] = dot * scale;
          bm = std::max(bm, s[j]);
        }
        const float correction = std::exp(m - bm);  // 0 on the first block (m = -inf)
        l *= correction;
        for (int64_t d = 0; d < hd; ++d) acc[d] *= correction;
        for (int64_t j = 0; j < N; ++j) {
          const float p = std::exp(s[j] - bm);
          l += p;
          const float* vj = V + base + j * hd;
          for (int64_t d = 0; d < hd; ++d) acc[d] += p * vj[d];
        }
        m = bm;
      }
      float* o = O + n * H * hd + h * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = acc[d] / l;
    }
  }, 8);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
