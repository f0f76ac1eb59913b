// The Oasis architecture (Oasis-500M's family, docs/oasis.md): a DiT of spatial + causal temporal sub-blocks over
// the latents of a ViT VAE, sampled with DDIM (v-prediction) over the sigmoid beta schedule; context frames enter
// clean, labelled context_level. The graph is model/oasis/dit.cc and vae.cc over the shared ops; this file plugs
// them into the runtime (model/architecture.h). The runtime's ring gives the temporal cache its slots (window =
// max_frames - 1, no sinks); the sampler is the reference's "cached" one: steps passes over the new frame, then
// one cache-write pass of its clean latent at context_level (passes per frame = steps + 1).
#include <cmath>
#include <memory>

#include "model/architecture.h"
#include "model/oasis/config.h"
#include "model/oasis/dit.h"
#include "model/oasis/vae.h"
#include "model/plugin.h"
#include "ops/scratch_bound.h"

namespace nfd {
namespace model {
namespace oasis {
namespace {

struct OasisWeights : Weights {
  DiTWeights dit;
  VAEWeights vae;
  OasisWeights(const ModelFile& file, const OasisConfig& c, Arena& arena, const Context& ctx, DType dtype)
      : dit(file, c, arena, ctx, dtype), vae(file, c, arena, ctx, dtype) {}
};

// The DDIM (eta 0) steps as x_next = A x + B v, computed in double from the float32 alpha_bar of the schedule:
// the reference's x0 = sqrt(a) x - sqrt(1 - a) v, eps = sqrt(1 - a) x + sqrt(a) v (its (x / sqrt(a) - x0) /
// sqrt(1 / a - 1), simplified), x_next = sqrt(a') x0 + sqrt(1 - a') eps with a' = alpha_bar of the next level (1
// after the last step), so A = sqrt(a' a) + sqrt((1 - a')(1 - a)), B = sqrt((1 - a') a) - sqrt(a' (1 - a)). Equal to
// the reference's float32 form up to rounding (bit for bit on the last step, where a' = 1).
struct Schedule {
  std::vector<float> a, b;
  explicit Schedule(const OasisConfig& c) {
    const std::vector<float> alphas = sigmoid_alphas_cumprod(c.noise_levels);
    for (int k = 0; k < c.num_steps(); ++k) {
      const double x = alphas[size_t(c.timesteps[size_t(k)])];
      const double xn = k + 1 < c.num_steps() ? double(alphas[size_t(c.timesteps[size_t(k + 1)])]) : 1.0;
      a.push_back(float(std::sqrt(xn) * std::sqrt(x) + std::sqrt(1.0 - xn) * std::sqrt(1.0 - x)));
      b.push_back(float(std::sqrt(1.0 - xn) * std::sqrt(x) - std::sqrt(xn) * std::sqrt(1.0 - x)));
    }
  }
};

class OasisSession : public SessionGraph {
 public:
  OasisSession(const OasisConfig& c, const OasisWeights& w, Arena& arena, DType dtype, const std::vector<int>& cache_slots)
      : schedule_(c), dit_(c, w.dit, arena, dtype, cache_slots.at(0)), vae_(c, w.vae, arena, dtype) {}

  void prepare_kernels(const Context& ctx, const Tensor& action) override {
    dit_.prepare_kernels(ctx, action);
    vae_.prepare_kernels(ctx);
  }
  void condition(const Context& ctx, const Tensor& action) override { dit_.condition(ctx, action); }
  // Philox noise of the frame (docs/rng.md), step 0: the reference's latent_noise(seed, frame, 0). Its clamp to
  // +-noise_clamp is the identity (the config refuses a clamp below the noise's largest magnitude).
  void start_latent(const Context& ctx, uint64_t seed, Tensor& latent) override {
    ops::noise_mix(ctx, seed, 0, 0.f, Tensor{}, 1.f, latent);
  }
  // Context frames enter clean: the cache-write pass reads the finished latent as it is.
  void write_input(const Context& ctx, uint64_t seed, const Tensor& latent, Tensor& write) override {
    ops::copy(ctx, latent, write);
  }
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel) override {
    return vae_.decode(ctx, latent, frame, cancel);
  }
  void encode(const Context& ctx, const Tensor& frame, Tensor& latent) override { vae_.encode(ctx, frame, latent); }
  void copy_state_from(const Context& ctx, const SessionGraph& other) override {
    dit_.copy_cache_from(ctx, static_cast<const OasisSession&>(other).dit_);  // the VAE keeps no state
  }
  size_t kv_cache_bytes() const override { return dit_.kv_cache_bytes(); }
  // The temporal K/V of the slots; the ViT VAE keeps no state between frames, so nothing follows them.
  size_t state_bytes(const std::vector<int>& counts) const override {
    return size_t(counts.at(0)) * dit_.kv().slot_bytes();
  }
  void save_state(const Context& ctx, const std::vector<std::vector<int>>& slots, uint8_t* out) const override {
    dit_.kv().save_slots(ctx, slots.at(0), out);
  }
  void load_state(const Context& ctx, const std::vector<std::vector<int>>& slots, const uint8_t* in) override {
    dit_.kv().load_slots(ctx, slots.at(0), in);
  }

  DiT& dit() { return dit_; }
  const Schedule& schedule() const { return schedule_; }

 private:
  Schedule schedule_;
  DiT dit_;
  VAE vae_;
};

using Plugin = PluginArchitecture<OasisConfig, OasisWeights, OasisSession, DiT::Activations, &oasis::parse_config,
                                  &oasis::config_to_json, &oasis::expected_tensors>;

class OasisArchitecture : public Plugin {
 public:
  const char* name() const override { return "oasis"; }
  void denoise_pass(const std::vector<Member>& members, int k, Activations& act) const override {
    const Schedule& s = session_of(members.at(0)).schedule();
    DiT::denoise_pass(dit_members(members, false), k, s.a.at(size_t(k)), s.b.at(size_t(k)),
                      static_cast<DiT::Activations&>(act));
  }
  void cache_write_pass(const std::vector<Member>& members, Activations& act) const override {
    DiT::cache_write_pass(dit_members(members, true), static_cast<DiT::Activations&>(act));
  }
  size_t scratch_bytes_bound(const Config& cfg, Device device, DType dtype, int threads,
                             int members) const override {
    const OasisConfig& c = cfg.arch_as<OasisConfig>();
    const OasisVAEConfig& v = c.vae;
    // The DiT (N tokens of width D; spatial attention over the N keys of the frame, temporal over max_frames keys
    // of one position) and the ViT VAE (its tokens, its width; attention over its tokens): the larger of each.
    const int64_t D = c.hidden_size, N = c.tokens_per_frame(), Nv = c.vae_tokens();
    const int64_t E = std::max(v.encoder_dim, v.decoder_dim), Hv = std::max(v.encoder_heads, v.decoder_heads);
    ops::ScratchShapes s;
    s.tokens = std::max(N, Nv);
    s.hidden = std::max(D, E);
    s.heads = std::max<int64_t>(c.num_heads, Hv);
    s.head_dim = std::max<int64_t>(c.head_dim(), std::max(v.encoder_dim / v.encoder_heads,
                                                          v.decoder_dim / v.decoder_heads));
    s.keys = std::max({N, Nv, int64_t(c.max_frames)});
    s.widest_gated_output = std::max(6 * D, E);
    s.largest_weight = std::max({D * D * c.mlp_ratio, 6 * D * D /* a sub-block's adaLN */, E * E * v.mlp_ratio});
    s.frame_height = c.frame_height;
    s.frame_width = c.frame_width;
    s.latent_channels = c.latent_channels;
    s.members = members;
    return ops::scratch_bytes_bound(s, device, dtype, threads);
  }

 private:
  // Each member's DiT member: its latent for a denoising pass, its cache-write input for the cache-write pass.
  static std::vector<DiT::Member> dit_members(const std::vector<Member>& members, bool write) {
    return members_as<DiT::Member>(members, [&](OasisSession& s, const Member& m) {
      return DiT::Member{&s.dit(), m.ctx, write ? m.write : m.latent};
    });
  }
};

}  // namespace

const Architecture& architecture() {
  static const OasisArchitecture arch;
  return arch;
}

}  // namespace oasis
}  // namespace model
}  // namespace nfd
