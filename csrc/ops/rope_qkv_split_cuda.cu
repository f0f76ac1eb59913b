// ops::rope_qkv_split on CUDA (contract checked in ops/rope_qkv_split.cc): split qkv[N, 3D] into q_out[H, N, hd] and
// the cache slot state->write_slot of the token-major k_cache /
// v_cache [slots, N, H, hd] (a token's row of the cache is its q/k/v section of qkv), with 3D RoPE on q and k. One
// thread per (token, group of 4 heads, pair): it moves the pair of q, k and v of each head of its group.
// Angles and cos/sin in double (tile::rope_angle), cast to float; rotation in fp32 without FMA contraction.
// frame_index and write_slot come from the device FrameState (graph replay reads the current frame's values);
// a write_slot outside [0, slots) writes nothing to the cache (a kernel cannot throw).
// With a table [N, P, 2] (P > 0), pair j < P rotates by its (cos, sin) and pairs j >= P are copied (unverified on a
// GPU). GQA caches and Waypoint's variant (QK-norm, de-interleaving, time pairs, value residual) take
// rope_variant_kernel below.
#include "core/switches.h"
#include "ops/attention_math.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
struct RopeDims {
  int d[3];
};

// The angle of a pair depends on the token and the pair, not the head: each thread computes it once (double pow,
// cos and sin: the costly part) and applies it to kHeadsPerThread heads. Consecutive threads take consecutive
// pairs of one (token, head group), so every load and store of a warp stays coalesced. NFD_RT_ROPE_GROUP=1 runs
// one head per thread, the path measured before grouping (the same kernel with a group of one head).
template <int kHeadsPerThread>
__global__ void rope_qkv_split_kernel(cudaops::DPtr qkv, RopeDims dims, double theta, int grid_cols, cudaops::DPtr q,
                                      cudaops::DPtr kc, cudaops::DPtr vc, int N, int H, int hd, int slots,
                                      const FrameState* state, cudaops::DPtr table, int P) {
  const int frame = state->frame_index, slot = state->write_slot;
  const bool write_cache = slot >= 0 && slot < slots;
  const int half = hd / 2, D = H * hd, groups = (H + kHeadsPerThread - 1) / kHeadsPerThread;
  const int64_t total = int64_t(N) * groups * half;
  NFD_GRID_STRIDE(i, total) {
    const int j = int(i % half), g = int((i / half) % groups), n = int(i / (int64_t(half) * groups));
    float c = 1.f, s = 0.f;
    const bool rotate = P == 0 || j < P;
    if (P == 0) {
      const double ang = tile::rope_angle(j, dims.d, theta, double(frame), double(n / grid_cols), double(n % grid_cols));
      c = float(cos(ang));
      s = float(sin(ang));
    } else if (rotate) {
      c = cudaops::ld(table, (int64_t(n) * P + j) * 2);
      s = cudaops::ld(table, (int64_t(n) * P + j) * 2 + 1);
    }
    const int h_end = min(H, (g + 1) * kHeadsPerThread);
    for (int h = g * kHeadsPerThread; h < h_end; ++h) {
      const int64_t src = int64_t(n) * 3 * D + h * hd + 2 * j;          // q at src, k at src + D, v at src + 2D
      const int64_t dst = (int64_t(h) * N + n) * hd + 2 * j;            // within [H, N, hd]
      const int64_t cdst = (int64_t(slot) * N + n) * D + h * hd + 2 * j;  // within the cache [slots, N, H, hd]
      float x0 = cudaops::ld(qkv, src), x1 = cudaops::ld(qkv, src + 1);
      cudaops::st(q, dst, rotate ? __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)) : x0);
      cudaops::st(q, dst + 1, rotate ? __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)) : x1);
      if (write_cache) {
        x0 = cudaops::ld(qkv, src + D);
        x1 = cudaops::ld(qkv, src + D + 1);
        cudaops::st(kc, cdst, rotate ? __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)) : x0);
        cudaops::st(kc, cdst + 1, rotate ? __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)) : x1);
        cudaops::st(vc, cdst, cudaops::ld(qkv, src + 2 * D));
        cudaops::st(vc, cdst + 1, cudaops::ld(qkv, src + 2 * D + 1));
      }
    }
  }
}
// Waypoint-1.5's variant (GQA widths, QK-norm, de-interleaved output, table + time pairs, value residual): one warp
// per (token, head) of the H query heads and the Hkv key heads; a key head's warp also writes the head's values.
// The head goes through shared memory (normalised), then each lane rotates pairs lane, lane + 32, ...
// (unverified on a GPU).
constexpr int kVariantWarps = 4;
constexpr int kMaxHeadDim = 256;
__global__ void rope_variant_kernel(cudaops::DPtr qkv, cudaops::DPtr v0, bool has_v0, float v_mix, cudaops::DPtr q,
                                    cudaops::DPtr kc, cudaops::DPtr vc, int N, int H, int Hkv, int hd, int slots,
                                    const FrameState* state, cudaops::DPtr table, int P, int TP, double theta,
                                    double time_scale, float norm_eps, bool deinterleave, bool has_table,
                                    RopeDims dims, int grid_cols) {
  __shared__ float head[kVariantWarps][kMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kVariantWarps + warp;  // t = n * (H + Hkv) + head
  if (t >= int64_t(N) * (H + Hkv)) return;  // warp-uniform
  const int n = int(t / (H + Hkv)), hh = int(t % (H + Hkv));
  const bool is_q = hh < H;
  const int frame = state->frame_index, slot = state->write_slot;
  const bool write_cache = slot >= 0 && slot < slots;
  if (!is_q && !write_cache) return;
  const int64_t width = int64_t(H + 2 * Hkv) * hd, Dq = int64_t(H) * hd, Dkv = int64_t(Hkv) * hd;
  const int64_t src = int64_t(n) * width + (is_q ? int64_t(hh) * hd : Dq + int64_t(hh - H) * hd);
  float* s = head[warp];
  float ss = 0.f;
  for (int e = lane; e < hd; e += 32) {
    const float x = cudaops::ld(qkv, src + e);
    s[e] = x;
    ss += x * x;
  }
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float r = norm_eps > 0.f ? 1.f / sqrtf(ss / hd + norm_eps) : 1.f;
  __syncwarp();
  const int half = hd / 2;
  const int64_t dst = is_q ? (int64_t(hh) * N + n) * hd : (int64_t(slot) * N + n) * Dkv + int64_t(hh - H) * hd;
  for (int i = lane; i < half; i += 32) {
    float x0 = s[2 * i], x1 = s[2 * i + 1];
    if (norm_eps > 0.f) {
      x0 = __fmul_rn(x0, r);
      x1 = __fmul_rn(x1, r);
    }
    float c = 1.f, sn = 0.f;
    if (!has_table) {  // the 3D formula (GQA caches without a table)
      const double ang = tile::rope_angle(i, dims.d, theta, double(frame), double(n / grid_cols), double(n % grid_cols));
      c = float(cos(ang));
      sn = float(sin(ang));
    } else if (i < P) {
      c = cudaops::ld(table, (int64_t(n) * P + i) * 2);
      sn = cudaops::ld(table, (int64_t(n) * P + i) * 2 + 1);
    } else if (i - P < TP) {
      const int j = i - P;
      const double ang = (double(frame) * time_scale) * pow(theta, -double(2 * (j / 2)) / double(TP));
      c = float(cos(ang));
      sn = float(sin(ang));
    }
    const float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn)), y1 = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, c));
    cudaops::DPtr out = is_q ? q : kc;
    cudaops::st(out, dst + (deinterleave ? i : 2 * i), y0);
    cudaops::st(out, dst + (deinterleave ? i + half : 2 * i + 1), y1);
  }
  if (!is_q) {  // the head's values, with the value residual v + v_mix (v0 - v)
    const int64_t vs = int64_t(n) * width + Dq + Dkv + int64_t(hh - H) * hd;
    for (int e = lane; e < hd; e += 32) {
      float v = cudaops::ld(qkv, vs + e);
      if (has_v0) v = __fadd_rn(v, __fmul_rn(v_mix, __fsub_rn(cudaops::ld(v0, vs + e), v)));
      cudaops::st(vc, dst + e, v);
    }
  }
}
}  // namespace

void cuda::rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out,
                          Tensor& k_cache, Tensor& v_cache, const Tensor* table, const Tensor* v0) {
  using namespace cudaops;
  const char* op = "rope_qkv_split";
  const int H = int(q_out.dim(0)), N = int(q_out.dim(1)), hd = int(q_out.dim(2)), Hkv = int(k_cache.dim(2));
  if (Hkv != H || v0 || rope.qk_norm_eps > 0.f || rope.deinterleave || rope.time_pairs > 0) {
    NFD_CHECK(hd <= kMaxHeadDim, unsupported,
              "ops::rope_qkv_split: head_dim " + std::to_string(hd) + ": the CUDA kernel of the GQA / QK-norm "
              "variant takes at most " + std::to_string(kMaxHeadDim));
    const int64_t heads = int64_t(N) * (H + Hkv);
    if (heads == 0) return;
    rope_variant_kernel<<<unsigned((heads + kVariantWarps - 1) / kVariantWarps), 32 * kVariantWarps, 0,
                          stream_of(ctx)>>>(
        dp(qkv), v0 ? dp(*v0) : DPtr{nullptr, q_out.dtype}, v0 != nullptr, rope.v_mix, dp(q_out), dp(k_cache),
        dp(v_cache), N, H, Hkv, hd, int(k_cache.dim(0)), ctx.state, table ? dp(*table) : DPtr{nullptr, q_out.dtype},
        table ? int(table->dim(1)) : 0, rope.time_pairs, rope.theta, rope.time_scale, rope.qk_norm_eps,
        rope.deinterleave, table != nullptr, RopeDims{{rope.rope_dims[0], rope.rope_dims[1], rope.rope_dims[2]}},
        rope.grid_cols);
    check_launch(op);
    return;
  }
  const int group = switch_value("NFD_RT_ROPE_GROUP", {"4", "1"}) == "4" ? 4 : 1;
  const int64_t total = int64_t(N) * ((H + group - 1) / group) * (hd / 2);
  if (total == 0) return;
  RopeDims dims{{rope.rope_dims[0], rope.rope_dims[1], rope.rope_dims[2]}};
  auto kernel = group == 4 ? rope_qkv_split_kernel<4> : rope_qkv_split_kernel<1>;
  kernel<<<grid_1d(total, 256), 256, 0, stream_of(ctx)>>>(dp(qkv), dims, rope.theta, rope.grid_cols, dp(q_out),
                                                          dp(k_cache), dp(v_cache), N, H, hd, int(k_cache.dim(0)),
                                                          ctx.state, table ? dp(*table) : DPtr{nullptr, q_out.dtype},
                                                          table ? int(table->dim(1)) : 0);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
