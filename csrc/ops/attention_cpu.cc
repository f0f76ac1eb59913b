// Attention of the current frame's queries over the visible cache slots, per head with OpenBLAS:
// S = Q K^T / sqrt(hd) one sgemm per visible slot (a block of N keys), a row softmax over all visible keys,
// then O = P V accumulated slot by slot. fp32 throughout; the row max keeps exp() in range.
#include <cblas.h>

#include <algorithm>
#include <cmath>
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
  const int64_t L = int64_t(st.num_visible) * N;  // keys of one head
  const int64_t ldo = H * hd;
  ::nfd::cpu::set_blas_threads(1);
  ::nfd::cpu::parallel_for(ctx.threads, H, [&](int64_t h0, int64_t h1) {  // heads are independent
    float* S = scratch(size_t(N * L));
    for (int64_t h = h0; h < h1; ++h) {
      const float* Q = q.ptr<float>() + h * N * hd;
      auto block = [&](const Tensor& cache, int b) {  // [N, hd] keys/values of head h in visible slot b
        return cache.ptr<float>() + (int64_t(st.visible_slots[b]) * H + h) * N * hd;
      };
      for (int b = 0; b < st.num_visible; ++b)
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(N), int(hd), scale, Q, int(hd),
                          block(k_cache, b), int(hd), 0.f, S + b * N, int(L));
      for (int64_t r = 0; r < N; ++r) {
        float* row = S + r * L;
        const float m = *std::max_element(row, row + L);
        float sum = 0.f;
        for (int64_t j = 0; j < L; ++j) sum += (row[j] = std::exp(row[j] - m));
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < L; ++j) row[j] *= inv;
      }
      float* O = out.ptr<float>() + h * hd;  // rows of out[N, H*hd], columns of head h
      for (int b = 0; b < st.num_visible; ++b)
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(hd), int(N), 1.f, S + b * N,
                          int(L), block(v_cache, b), int(hd), b ? 1.f : 0.f, O, int(ldo));
    }
  }, ::nfd::cpu::grain_for(2 * N * L * hd));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
