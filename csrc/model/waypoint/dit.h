// The Waypoint-1.5 DiT, written once against ops/ops.h (python/nfd_rt/reference/waypoint.py WaypointDiT is the
// oracle). Per frame of N tokens of width D, one pass at noise level sigma:
//   x = patch_embed(patchify(latent))
//   per layer l (adaLN vectors of (l, sigma) precomputed at load; scale, shift, gate for attention and MLP):
//     qkv = qkv_l(RMS(x) (1 + s1) + b1); v += v_mix_l (v0 - v) (l > 0); q, k: RMS per head then RoPE (de-interleaved)
//     x += g1 * out_l(GQA attention over the frames the layer's cache group shows, and the frame itself)
//     control layers: x += fusion_out(SiLU(fusion_x(RMS(x)) + fusion_c(RMS(e))))     (e: the controls' embedding)
//     x += g2 * fc2(SiLU(fc1(RMS(x) (1 + s2) + b2)))
//   velocity = unpatchify(final(SiLU(RMS(x) (1 + scale) + shift)))
// Layer l's K/V live in the ring of its cache group (0 local, 1 global: WaypointConfig::group_of), read through the
// group's FrameState (model::group_context). DiTWeights are the model's; a DiT is one session's state (its caches,
// its per-frame control terms). A pass runs for a list of members as the other plug-ins do: GEMMs once over all
// members' tokens, everything of a member's own frame (norms, RoPE, attention, its fusion term) per member.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/device.h"
#include "core/model_file.h"
#include "model/architecture.h"
#include "model/plugin.h"
#include "model/waypoint/config.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace waypoint {

// (cos, sin) [N, hd / 4, 2] of the spatial RoPE pairs (column pairs, then row pairs) of the token grid, as
// reference/waypoint.py rope_angles: angles in double, cos/sin rounded to float.
std::vector<float> spatial_rope_table(const WaypointConfig& c);
// The noise level's Fourier features sqrt(2) [sin(1000 sigma f_i), cos(1000 sigma f_i)], f_i = 10000^(-i / (n/2 - 1)),
// in double, rounded to float (reference: noise_features).
std::vector<float> noise_features(double sigma, int n);

struct DiTWeights {
  struct Block {
    Tensor qkv_w, out_w, fusion_x_w, fusion_c_w, fusion_out_w, fc1_w, fc2_w;  // no biases; fusion_*: control layers
    float v_mix = 0.f;
  };
  Tensor patch_w, ctrl_fc1_w, ctrl_fc2_w, final_w, final_b;
  std::vector<Block> blocks;
  Tensor mods;        // [depth, passes, 6, D]: (attn scale, shift, gate, mlp scale, shift, gate) of each sigma
  Tensor final_mods;  // [passes, 2, D]: the final layer's (scale, shift)
  Tensor rope;        // [N, hd / 4, 2]: the spatial pairs' rotation
  Tensor zeros, ones;  // [D]: a plain RMSNorm's shift and scale (offset 1); an ungated residual's gate
  DiTWeights(const ModelFile& file, const WaypointConfig& cfg, Arena& arena, const Context& ctx, DType dtype);
};

class DiT {
 public:
  struct Activations : model::Activations {
    // rows member-major ([capacity * N, ...]); qkv0: layer 0's qkv (its values are the value residual's v0)
    Tensor tokens, h, hn, qkv, qkv0, q, attn, mlp, tmp, vel;
    Activations(const WaypointConfig& cfg, Arena& arena, DType dtype, int capacity);
  };
  struct Member {
    DiT* dit;
    Context ctx;    // the member's FrameStates (one per cache group); device, threads and stream of the batch
    Tensor latent;  // [C, h, w]: updated by the denoising passes, read by the commit pass
  };

  DiT(const WaypointConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype,
      const std::vector<int>& cache_slots);

  // The GEMM engines of a frame's linears on CUDA (a no-op on the CPU). Synchronises ctx's stream.
  void prepare_kernels(const Context& ctx, const Tensor& action);
  // Per frame: e = control_embed(action) and fusion_c(RMS(e)) of every control layer.
  void condition(const Context& ctx, const Tensor& action);
  // Euler pass k of every member: latent += dt * velocity(latent, sigma_k); each member's K/V of every layer into
  // its group's write slot.
  static void denoise_pass(const std::vector<Member>& members, int k, float dt, Activations& act);
  // The commit pass: each member's K/V of its latent at the last sigma (0) into its write slots; it stops after
  // the last layer's K/V.
  static void commit_pass(const std::vector<Member>& members, Activations& act);

  void copy_cache_from(const Context& ctx, const DiT& other);
  size_t kv_cache_bytes() const { return kv_bytes_; }
  // Snapshots: one slot of group g in all its layers (K then V per layer), and the copies of `slots` of group g.
  size_t slot_bytes(int g) const;
  void save_slots(const Context& ctx, int g, const std::vector<int>& slots, uint8_t* out) const;
  void load_slots(const Context& ctx, int g, const std::vector<int>& slots, const uint8_t* in);

 private:
  static void forward(const std::vector<Member>& members, int k, bool full, Activations& act);

  const WaypointConfig& cfg_;
  const DiTWeights& w_;
  std::vector<Tensor> k_, v_;  // per layer [slots of its group, N, Hkv, hd], token-major
  size_t kv_bytes_ = 0;
  std::vector<ops::RopeParams> rope_;  // per layer (its v_mix)
  Tensor ctrl_h_, ctrl_e_, ctrl_en_;   // the controls' MLP: [1, mlp D], [1, D], RMS(e) [1, D]
  Tensor fusion_terms_;                // [control layers, D]: fusion_c(RMS(e)) of each
  Activations own_;
};

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
