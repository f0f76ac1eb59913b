// The DiT forward, written once against ops/ops.h. DiTWeights are the model's (loaded once, shared by every
// session of a runtime::Model); a DiT is one session's state: its KV cache, its per-frame adaLN vectors and its
// activation buffers. Per-frame values (frame index, cache slots) come from the FrameState in ctx.state.
//
// A pass runs for a list of members (sessions of one model, each with its own context, cache and latent): the
// GEMMs run once over all members' tokens (the weights are read once for all of them), everything that depends
// on a member's own frame (adaLN modulation, RoPE at its frame index, attention over its own cache, the gated
// residuals) runs per member on its rows. One member is the plain single-session step.
#pragma once

#include <vector>

#include "backends/device.h"
#include "model/architecture.h"
#include "model/nfd/config.h"
#include "model/plugin.h"
#include "core/model_file.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace nfd_arch {

struct DiTWeights {
  struct Block {
    Tensor adaln_w, adaln_b, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  Tensor patch_w, patch_b, act_fc1_w, act_fc1_b, act_fc2_w, act_fc2_b, final_adaln_w, final_adaln_b, final_w,
      final_b;
  std::vector<Block> blocks;
  Tensor temb;  // [passes, D] time embeddings per pass position, computed once on the host
  // Uploads the weights to the arena's device as `dtype` (on a measuring arena: only counts the bytes).
  DiTWeights(const ModelFile& file, const NfdConfig& cfg, Arena& arena, const Context& ctx, DType dtype);
};

class DiT {
 public:
  // The activations of one pass for up to `capacity` members, rows member-major ([capacity * N, ...]).
  struct Activations : model::Activations {
    Tensor tokens, h, hn, qkv, q, attn, mlp, tmp, vel;
    Activations() = default;
    Activations(const NfdConfig& cfg, Arena& arena, DType dtype, int capacity);
  };
  struct Member {
    DiT* dit;
    Context ctx;     // the member's FrameState; device, threads and stream of the batch
    Tensor latent;   // [C, h, w]: updated by denoise passes, read by the cache-write pass
  };

  // Allocates the KV cache (token-major [cache_slots, N, H, hd] per layer: a frame's keys are one contiguous
  // range, see ops::attention), the adaLN buffers and one member's activations.
  DiT(const NfdConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype, int cache_slots);

  // Picks the kernels of a single-session frame where the CUDA backend has two (a no-op on the CPU): the GEMM
  // engine of every linear shape (ops::linear_prepare: CUTLASS against cuBLASLt), with `action` [A] standing
  // for any action, and attention's query tile (ops::attention_prepare, over this session's cache: its
  // contents do not matter). Synchronises ctx's stream: call at session open.
  void prepare_kernels(const Context& ctx, const Tensor& action);

  // Per frame: c_k = SiLU(temb(t_k) + action_embed(action)) and the adaLN vectors of every block for every
  // pass position k in [0, num_steps] (k == num_steps: the cache-write pass at t = context_noise).
  void condition(const Context& ctx, const Tensor& action);
  // Denoising pass k of every member: latent += dt * velocity(latent, t_k); writes each member's K/V to its
  // state->write_slot. `act` must hold members.size() members.
  static void denoise_pass(const std::vector<Member>& members, int k, float dt, Activations& act);
  // Cache-write pass: the K/V of each member's latent at t = context_noise into its write slot. Only K/V are
  // needed, so the last block's attention/MLP and the final layer are skipped.
  static void cache_write_pass(const std::vector<Member>& members, Activations& act);
  // The same for this session alone, on its own activations.
  void denoise_pass(const Context& ctx, int k, float dt, Tensor& latent);
  void cache_write_pass(const Context& ctx, const Tensor& latent);

  // Copies another session's KV cache (same config and device) into this one (fork).
  void copy_cache_from(const Context& ctx, const DiT& other) { kv_.copy_from(ctx, other.kv_); }
  size_t kv_cache_bytes() const { return kv_.bytes; }

  // The cache itself (snapshots: LayerKV::save_slots / load_slots).
  const LayerKV& kv() const { return kv_; }
  LayerKV& kv() { return kv_; }

 private:
  // Runs the blocks up to the K/V of the last one; the rest only when `full` (then fills act.vel).
  static void forward(const std::vector<Member>& members, int k, bool full, Activations& act);

  const NfdConfig& cfg_;
  const DiTWeights& w_;
  ops::RopeParams rope_{};
  LayerKV kv_;
  Tensor zeros_;       // [D]: add_silu(x, zeros) = silu(x)
  Tensor act_h_, act_hs_, act_emb_;  // action MLP [D] each
  Tensor cond_;        // [passes, D]
  Tensor mod_;         // [depth, passes, 6D]
  Tensor final_mod_;   // [passes, 2D]
  Activations own_;    // capacity 1: the single-session passes
};

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
