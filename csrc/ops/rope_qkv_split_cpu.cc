// ops::rope_qkv_split on the CPU (contract checked in ops/rope_qkv_split.cc).
// Split qkv into heads, rotate q and k with 3D RoPE, write q to q_out [H, N, hd] and k/v to the cache slot
// state->write_slot of the token-major caches [slots, N, H, hd] (a token's heads are one contiguous row of the
// cache, as in qkv). Angles and cos/sin in double (as the reference), rotation in fp32. With a table, its (cos, sin)
// rotate the first P pairs of every head and the rest are copied.
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "ops/attention_math.h"
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache,
                    Tensor& v_cache, const Tensor* table) {
  const bool bf16 = cpu_bf16("rope_qkv_split", q_out);
  const int64_t H = q_out.dim(0), N = q_out.dim(1), hd = q_out.dim(2), D = H * hd;
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
  // The rotation in fp32 (each bf16 input widened, each result rounded once); v is copied bit for bit.
  auto run = [&](auto* src, auto* q, auto* kc, auto* vc) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    T* k = kc + slot * N * D;
    T* v = vc + slot * N * D;
    ::nfd::cpu::parallel_for(ctx.threads, N, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const T* row = src + n * 3 * D;
        const float* c = cs + 2 * n * P;
        for (int64_t h = 0; h < H; ++h) {
          const T* qi = row + h * hd;
          const T* ki = row + D + h * hd;
          T* qo = q + (h * N + n) * hd;
          T* ko = k + n * D + h * hd;
          for (int64_t i = 0; i < P; ++i) {
            const float co = c[2 * i], si = c[2 * i + 1];
            const float q0 = to_float(qi[2 * i]), q1 = to_float(qi[2 * i + 1]);
            const float k0 = to_float(ki[2 * i]), k1 = to_float(ki[2 * i + 1]);
            qo[2 * i] = from_float<T>(q0 * co - q1 * si);
            qo[2 * i + 1] = from_float<T>(q0 * si + q1 * co);
            ko[2 * i] = from_float<T>(k0 * co - k1 * si);
            ko[2 * i + 1] = from_float<T>(k0 * si + k1 * co);
          }
          for (int64_t e = 2 * P; e < hd; ++e) {  // pairs past the table pass unchanged
            qo[e] = qi[e];
            ko[e] = ki[e];
          }
        }
        std::memcpy(v + n * D, row + 2 * D, size_t(D) * sizeof(T));  // v: the token's heads, already in order
      }
    }, ::nfd::cpu::grain_for(4 * H * hd));
  };
  if (bf16)
    run(qkv.ptr<bf16_t>(), q_out.ptr<bf16_t>(), k_cache.ptr<bf16_t>(), v_cache.ptr<bf16_t>());
  else
    run(qkv.ptr<float>(), q_out.ptr<float>(), k_cache.ptr<float>(), v_cache.ptr<float>());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
