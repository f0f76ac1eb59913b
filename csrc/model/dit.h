// The DiT forward for one frame (N tokens), written once against ops/ops.h. All buffers are fixed tensors from
// the session's arena; per-frame values (frame index, cache slots) come from the FrameState in ctx.state.
#pragma once

#include <vector>

#include "backends/device.h"
#include "core/config.h"
#include "core/model_file.h"
#include "ops/ops.h"

namespace nfd {
namespace model {

class DiT {
 public:
  // Uploads the weights and allocates the KV cache ([cache_slots, N, H, hd] per layer) and activations.
  // The time embeddings of the schedule and of context_noise are computed here once, on the host.
  DiT(const ModelFile& file, const Config& cfg, Arena& arena, const Context& ctx, DType dtype, int cache_slots);

  // Per frame: c_k = SiLU(temb(t_k) + action_embed(action)) and the adaLN vectors of every block for every
  // pass position k in [0, num_steps] (k == num_steps: the cache-write pass at t = context_noise).
  void condition(const Context& ctx, const Tensor& action);
  // Denoising pass k: latent += dt * velocity(latent, t_k). Writes this pass' K/V to state->write_slot.
  void denoise_pass(const Context& ctx, int k, float dt, Tensor& latent);
  // Cache-write pass: K/V of `latent` at t = context_noise into state->write_slot. Only K/V are needed, so
  // the last block's attention/MLP and the final layer are skipped.
  void cache_write_pass(const Context& ctx, const Tensor& latent);

  size_t kv_cache_bytes() const { return kv_bytes_; }

 private:
  struct Block {
    Tensor adaln_w, adaln_b, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
    Tensor k_cache, v_cache;
  };
  // Runs blocks up to the K/V of the last one; the rest only when `full`. Returns nothing: fills h_ / vel_.
  void forward(const Context& ctx, int k, const Tensor& latent, bool full);

  Config cfg_;
  ops::RopeParams rope_{};
  Tensor patch_w_, patch_b_, act_fc1_w_, act_fc1_b_, act_fc2_w_, act_fc2_b_, final_adaln_w_, final_adaln_b_,
      final_w_, final_b_;
  std::vector<Block> blocks_;
  Tensor temb_;        // [passes, D] time embeddings per pass position
  Tensor zeros_;       // [D]: add_silu(x, zeros) = silu(x)
  Tensor act_h_, act_hs_, act_emb_;  // action MLP [D] each
  Tensor cond_;        // [passes, D]
  Tensor mod_;         // [depth, passes, 6D]
  Tensor final_mod_;   // [passes, 2D]
  Tensor tokens_, h_, hn_, qkv_, q_, attn_, mlp_, vel_;
  size_t kv_bytes_ = 0;
};

}  // namespace model
}  // namespace nfd
