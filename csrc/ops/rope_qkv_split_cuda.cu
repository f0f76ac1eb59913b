// ops::rope_qkv_split on CUDA (contract checked in ops/rope_qkv_split.cc): split qkv[N, 3D] into q_out[H, N, hd] and
// the cache slot state->write_slot of the token-major k_cache /
// v_cache [slots, N, H, hd] (a token's row of the cache is its q/k/v section of qkv), with 3D RoPE on q and k. One
// thread per (token, group of 4 heads, pair): it moves the pair of q, k and v of each head of its group.
// Angles and cos/sin in double (tile::rope_angle), cast to float; rotation in fp32 without FMA contraction.
// frame_index and write_slot come from the device FrameState (graph replay reads the current frame's values);
// a write_slot outside [0, slots) writes nothing to the cache (a kernel cannot throw).
// With a table [N, P, 2] (P > 0), pair j < P rotates by its (cos, sin) and pairs j >= P are copied (unverified on a
// GPU).
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
}  // namespace

void cuda::rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out,
                          Tensor& k_cache, Tensor& v_cache, const Tensor* table) {
  using namespace cudaops;
  const char* op = "rope_qkv_split";
  const int H = int(q_out.dim(0)), N = int(q_out.dim(1)), hd = int(q_out.dim(2));
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
