// The Oasis DiT, written once against ops/ops.h (python/nfd_rt/reference/oasis.py OasisDiT is the oracle).
// Per frame of N tokens of width D: c_k = SiLU(time_embed(features(level_k)) + action_embed(action)) for every pass
// k of the frame; each block is a spatial sub-block (attention among the frame's tokens, axial RoPE from a table)
// and a temporal sub-block (each token over the same token of the frames it sees: the temporal K/V cache, 1-D RoPE
// at the absolute frame index), each an adaLN-Zero block of its own; the final layer gives the v-prediction.
//
// DiTWeights are the model's (loaded once, shared by its sessions); a DiT is one session's state: its temporal
// K/V cache (token-major [slots, N, H, hd] per layer, the runtime's KvRing decides the slots), its per-frame
// adaLN vectors and one member's activations. A pass runs for a list of members as the NFD DiT does: GEMMs once
// over all members' tokens, everything of a member's own frame (modulation, RoPE, attention, residuals) per member.
#pragma once

#include <vector>

#include "backends/device.h"
#include "core/model_file.h"
#include "model/architecture.h"
#include "model/oasis/config.h"
#include "model/plugin.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace oasis {

// (cos, sin) [rows * cols, dim, 2] of the axial "pixel" RoPE of a rows x cols token grid (tokens row-major): dim / 2
// frequencies pi * linspace(1, max_freq / 2, dim / 2); pair j < dim / 2 rotates by row_pos * f_j, pair dim / 2 + j
// by col_pos * f_j, positions linspace(-1, 1, n) per axis. Angles and cos/sin in double, as pixel_rope_angles.
std::vector<float> pixel_rope_table(int rows, int cols, int dim, double max_freq);

struct DiTWeights {
  struct SubBlock {
    Tensor adaln_w, adaln_b, qkv_w, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;  // qkv has no bias
  };
  struct Block {
    SubBlock sub[2];  // 0: spatial, 1: temporal
  };
  Tensor patch_w, patch_b, act_w, act_b, final_adaln_w, final_adaln_b, final_w, final_b;
  std::vector<Block> blocks;
  Tensor temb;          // [passes, D]: time_embed of the level of each pass (the DDIM steps, then context_level)
  Tensor spatial_rope;  // [N, spatial_rope_dim, 2]: the spatial sub-blocks' rotation
  DiTWeights(const ModelFile& file, const OasisConfig& cfg, Arena& arena, const Context& ctx, DType dtype);
};

class DiT {
 public:
  struct Activations : model::Activations {
    Tensor tokens, h, hn, qkv, q, ks, vs, attn, mlp, tmp, vel;  // rows member-major ([capacity * N, ...])
    Activations(const OasisConfig& cfg, Arena& arena, DType dtype, int capacity);
  };
  struct Member {
    DiT* dit;
    Context ctx;    // the member's FrameState; device, threads and stream of the batch
    Tensor latent;  // [C, h, w]: updated by the denoising passes, read by the cache-write pass
  };

  DiT(const OasisConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype, int cache_slots);

  // The GEMM engines of a frame's linears on CUDA (ops::linear_prepare; a no-op on the CPU), `action` standing for
  // any action. Synchronises ctx's stream: call at session open.
  void prepare_kernels(const Context& ctx, const Tensor& action);
  // Per frame: the conditioning and the adaLN vectors of every sub-block for every pass k in [0, num_steps]
  // (k == num_steps: the cache-write pass at context_level).
  void condition(const Context& ctx, const Tensor& action);
  // Denoising pass k of every member: latent = A_k latent + B_k v (the DDIM step), each member's temporal K/V
  // written to its state->write_slot. `act` holds at least members.size() members.
  static void denoise_pass(const std::vector<Member>& members, int k, float a, float b, Activations& act);
  // The cache-write pass: each member's temporal K/V of its latent at context_level into its write slot; it stops
  // after the last layer's temporal K/V.
  static void cache_write_pass(const std::vector<Member>& members, Activations& act);

  void copy_cache_from(const Context& ctx, const DiT& other) { kv_.copy_from(ctx, other.kv_); }
  size_t kv_cache_bytes() const { return kv_.bytes; }
  const LayerKV& kv() const { return kv_; }
  LayerKV& kv() { return kv_; }

 private:
  static void forward(const std::vector<Member>& members, int k, bool full, Activations& act);

  const OasisConfig& cfg_;
  const DiTWeights& w_;
  ops::RopeParams temporal_rope_{};  // (head_dim, 0, 0): pair j at frame f rotates by f theta^(-2j / hd)
  LayerKV kv_;  // per layer: the temporal sub-block's K (after RoPE) and V
  Tensor act_emb_;     // [1, D]
  Tensor cond_;        // [passes, D]
  Tensor mod_[2];      // [depth, passes, 6D]: spatial, temporal
  Tensor final_mod_;   // [passes, 2D]
  FixedFrameState spatial_state_;  // the spatial attention: the frame's own K/V in act.ks / act.vs (slot 0)
  Activations own_;
};

}  // namespace oasis
}  // namespace model
}  // namespace nfd
