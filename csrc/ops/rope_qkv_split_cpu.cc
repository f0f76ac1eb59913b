// ops::rope_qkv_split on the CPU (contract checked in ops/rope_qkv_split.cc).
// Split qkv into heads, rotate q and k with 3D RoPE, write q to q_out [H, N, hd] and k/v to the cache slot
// state->write_slot of the token-major caches [slots, N, Hkv, hd] (a token's heads are one contiguous row of the
// cache, as in qkv). Angles and cos/sin in double (as the reference), rotation in fp32. With a table, its (cos, sin)
// rotate the first P pairs of every head and the rest are copied, or rotated by the frame (time pairs).
// Waypoint-1.5's variant: QK-norm before the rotation, de-interleaved output, value residual (ops/ops.h).
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/attention_math.h"
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

namespace {

// One head of hd values, widened to fp32 in buf: optional RMS normalisation (scale by 1 / sqrt(mean(x^2) + eps)),
// then the rotation of its pairs (pair i by (c[2i], c[2i + 1]) for i < P, by (t[2j], t[2j + 1]) for
// i = P + j < P + TP, unchanged after), written interleaved (in place of the pair) or de-interleaved (x0' at i, x1'
// at i + hd / 2), each result rounded once to T.
template <typename T>
void rotate_head(const T* in, T* out, int64_t hd, const float* c, int64_t P, const float* t, int64_t TP,
                 float norm_eps, bool deinterleave, float* buf) {
  for (int64_t e = 0; e < hd; ++e) buf[e] = to_float(in[e]);
  if (norm_eps > 0.f) {
    double ss = 0;
    for (int64_t e = 0; e < hd; ++e) ss += double(buf[e]) * buf[e];
    const float r = float(1.0 / std::sqrt(ss / double(hd) + double(norm_eps)));
    for (int64_t e = 0; e < hd; ++e) buf[e] *= r;
  }
  const float* x = buf;
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    float y0 = x0, y1 = x1;
    const float* cs = i < P ? c + 2 * i : (i - P < TP ? t + 2 * (i - P) : nullptr);
    if (cs) {
      const float co = cs[0], si = cs[1];
      y0 = x0 * co - x1 * si;
      y1 = x0 * si + x1 * co;
    }
    if (deinterleave) {
      out[i] = from_float<T>(y0);
      out[i + half] = from_float<T>(y1);
    } else {
      out[2 * i] = from_float<T>(y0);
      out[2 * i + 1] = from_float<T>(y1);
    }
  }
}

}  // namespace

void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache,
                    Tensor& v_cache, const Tensor* table, const Tensor* v0) {
  const bool bf16 = cpu_bf16("rope_qkv_split", q_out);
  const int64_t H = q_out.dim(0), N = q_out.dim(1), hd = q_out.dim(2), Hkv = k_cache.dim(2);
  const int64_t Dq = H * hd, Dkv = Hkv * hd, width = Dq + 2 * Dkv;
  const int dt = rope.rope_dims[0], dh = rope.rope_dims[1], dw = rope.rope_dims[2];
  const FrameState& st = *ctx.state;
  const int64_t slot = st.write_slot;

  const int64_t half = hd / 2;
  // cos, sin per (token, pair) in fp32: the table's P pairs (widened from bf16), or all pairs from the 3D formula.
  const int64_t P = table ? table->dim(1) : half;
  const float* cs = nullptr;
  if (table && !bf16) {
    cs = table->ptr<float>();
  } else if (table) {
    float* t = scratch(size_t(2 * N * P));
    const bf16_t* tb = table->ptr<bf16_t>();
    for (int64_t e = 0; e < 2 * N * P; ++e) t[e] = to_float(tb[e]);
    cs = t;
  } else {
    float* t = scratch(size_t(2 * N * half));
    const int dims[3] = {dt, dh, dw};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < half; ++i) {  // the angle formula the CUDA kernel uses too
        const double angle = tile::rope_angle(int(i), dims, rope.theta, double(st.frame_index),
                                              double(n / rope.grid_cols), double(n % rope.grid_cols));
        t[2 * (n * half + i)] = float(std::cos(angle));
        t[2 * (n * half + i) + 1] = float(std::sin(angle));
      }
    cs = t;
  }
  // The time pairs (the same for every token): angle frame * time_scale * theta^(-2 floor(j / 2) / TP).
  const int64_t TP = table ? rope.time_pairs : 0;
  std::vector<float> tcs(size_t(2 * TP));
  for (int64_t j = 0; j < TP; ++j) {
    const double freq = std::pow(rope.theta, -double(2 * (j / 2)) / double(TP));
    const double angle = (double(st.frame_index) * rope.time_scale) * freq;
    tcs[size_t(2 * j)] = float(std::cos(angle));
    tcs[size_t(2 * j + 1)] = float(std::sin(angle));
  }
  const bool plain = rope.qk_norm_eps == 0.f && !rope.deinterleave && TP == 0;  // the NFD and Oasis layouts
  const float mix = rope.v_mix;
  // The rotation in fp32 (each bf16 input widened, each result rounded once); v is copied bit for bit, or mixed
  // with v0 in fp32 and rounded once.
  auto run = [&](auto* src, auto* q, auto* kc, auto* vc) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    const T* vres = v0 ? v0->ptr<T>() : nullptr;
    T* k = kc + slot * N * Dkv;
    T* v = vc + slot * N * Dkv;
    ::nfd::cpu::parallel_for(ctx.threads, N, [&](int64_t n0, int64_t n1) {
      std::vector<float> buf(static_cast<size_t>(hd));
      for (int64_t n = n0; n < n1; ++n) {
        const T* row = src + n * width;
        const float* c = cs + 2 * n * P;
        if (plain) {
          auto rotate = [&](const T* xi, T* xo) {
            for (int64_t i = 0; i < P; ++i) {
              const float co = c[2 * i], si = c[2 * i + 1];
              const float x0 = to_float(xi[2 * i]), x1 = to_float(xi[2 * i + 1]);
              xo[2 * i] = from_float<T>(x0 * co - x1 * si);
              xo[2 * i + 1] = from_float<T>(x0 * si + x1 * co);
            }
            for (int64_t e = 2 * P; e < hd; ++e) xo[e] = xi[e];  // pairs past the table pass unchanged
          };
          for (int64_t h = 0; h < H; ++h) rotate(row + h * hd, q + (h * N + n) * hd);
          for (int64_t h = 0; h < Hkv; ++h) rotate(row + Dq + h * hd, k + n * Dkv + h * hd);
        } else {
          for (int64_t h = 0; h < H; ++h)
            rotate_head(row + h * hd, q + (h * N + n) * hd, hd, c, P, tcs.data(), TP, rope.qk_norm_eps,
                        rope.deinterleave, buf.data());
          for (int64_t h = 0; h < Hkv; ++h)
            rotate_head(row + Dq + h * hd, k + n * Dkv + h * hd, hd, c, P, tcs.data(), TP, rope.qk_norm_eps,
                        rope.deinterleave, buf.data());
        }
        const T* vi = row + Dq + Dkv;
        if (vres) {  // the value residual: v + v_mix (v0 - v), as the reference orders it
          const T* v0i = vres + n * width + Dq + Dkv;
          for (int64_t e = 0; e < Dkv; ++e) {
            const float a = to_float(vi[e]);
            v[n * Dkv + e] = from_float<T>(a + mix * (to_float(v0i[e]) - a));
          }
        } else {
          std::memcpy(v + n * Dkv, vi, size_t(Dkv) * sizeof(T));  // v: the token's heads, already in order
        }
      }
    }, ::nfd::cpu::grain_for(4 * (H + Hkv) * hd));
  };
  if (bf16)
    run(qkv.ptr<bf16_t>(), q_out.ptr<bf16_t>(), k_cache.ptr<bf16_t>(), v_cache.ptr<bf16_t>());
  else
    run(qkv.ptr<float>(), q_out.ptr<float>(), k_cache.ptr<float>(), v_cache.ptr<float>());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
