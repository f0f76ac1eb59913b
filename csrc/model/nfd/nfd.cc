// The NFD architecture (this project's own models: tiny, nfd-130m, nfd-310m): a DiT over per-frame latents with
// block-causal attention over the KV ring, adaLN-Zero conditioning on (t, action) per frame, Euler flow matching
// over the schedule of the file, then one cache-write pass at t = context_noise; a conv VAE decodes. The graph
// is model/nfd/dit.cc and vae.cc over the shared ops; this file plugs them into the runtime (model/architecture.h).
#include <algorithm>
#include <memory>

#include "model/architecture.h"
#include "model/nfd/config.h"
#include "model/nfd/dit.h"
#include "model/nfd/vae.h"
#include "model/plugin.h"
#include "ops/scratch_bound.h"

namespace nfd {
namespace model {
namespace nfd_arch {
namespace {

struct NfdWeights : Weights {
  DiTWeights dit;
  VAEWeights vae;
  NfdWeights(const ModelFile& file, const NfdConfig& c, Arena& arena, const Context& ctx, DType dtype)
      : dit(file, c, arena, ctx, dtype), vae(file, c, arena, ctx, dtype, /*with_encoder=*/true) {}
};

// Euler steps and the cache-write mix as the reference computes them: Python doubles, cast to fp32 where they
// meet a tensor.
struct Schedule {
  std::vector<float> dts;  // latent += dts[k] * velocity at pass k
  float write_keep = 1.f, write_noise = 0.f;
  explicit Schedule(const NfdConfig& c) {
    for (int k = 0; k < c.num_steps(); ++k) {
      double t = c.schedule[size_t(k)], next = k + 1 < c.num_steps() ? c.schedule[size_t(k + 1)] : 0.0;
      dts.push_back(float(next - t));
    }
    write_keep = float(1.0 - double(c.context_noise));
    write_noise = c.context_noise;
  }
};

class NfdSession : public SessionGraph {
 public:
  NfdSession(const NfdConfig& c, const NfdWeights& w, Arena& arena, DType dtype, const std::vector<int>& cache_slots)
      : c_(c), schedule_(c), dit_(c, w.dit, arena, dtype, cache_slots.at(0)), vae_(c, w.vae, arena, dtype) {}

  void prepare_kernels(const Context& ctx, const Tensor& action) override { dit_.prepare_kernels(ctx, action); }
  void condition(const Context& ctx, const Tensor& action) override { dit_.condition(ctx, action); }
  void start_latent(const Context& ctx, uint64_t seed, Tensor& latent) override {
    ops::noise_mix(ctx, seed, 0, 0.f, Tensor{}, 1.f, latent);
  }
  void write_input(const Context& ctx, uint64_t seed, const Tensor& latent, Tensor& write) override {
    ops::noise_mix(ctx, seed, c_.num_steps(), schedule_.write_keep, latent, schedule_.write_noise, write);
  }
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel) override {
    return vae_.decode(ctx, latent, frame, cancel);
  }
  void encode(const Context& ctx, const Tensor& frame, Tensor& latent) override { vae_.encode(ctx, frame, latent); }
  void copy_state_from(const Context& ctx, const SessionGraph& other) override {
    dit_.copy_cache_from(ctx, static_cast<const NfdSession&>(other).dit_);  // the VAE keeps no state
  }
  size_t kv_cache_bytes() const override { return dit_.kv_cache_bytes(); }
  // The K/V of the slots; the VAE keeps no state between frames, so nothing follows them.
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
  const NfdConfig& c_;
  Schedule schedule_;
  DiT dit_;
  VAE vae_;
};

using Plugin = PluginArchitecture<NfdConfig, NfdWeights, NfdSession, DiT::Activations, &nfd_arch::parse_config,
                                  &nfd_arch::config_to_json, &nfd_arch::expected_tensors>;

class NfdArchitecture : public Plugin {
 public:
  const char* name() const override { return "nfd"; }
  void denoise_pass(const std::vector<Member>& members, int k, Activations& act) const override {
    const float dt = session_of(members.at(0)).schedule().dts.at(size_t(k));
    DiT::denoise_pass(dit_members(members, false), k, dt, static_cast<DiT::Activations&>(act));
  }
  void cache_write_pass(const std::vector<Member>& members, Activations& act) const override {
    DiT::cache_write_pass(dit_members(members, true), static_cast<DiT::Activations&>(act));
  }
  size_t scratch_bytes_bound(const Config& cfg, Device device, DType dtype, int threads,
                             int members) const override {
    const NfdConfig& c = cfg.arch_as<NfdConfig>();
    ops::ScratchShapes s;
    s.tokens = c.tokens_per_frame();
    s.hidden = c.hidden_size;
    s.heads = c.num_heads;
    s.head_dim = c.head_dim();
    s.keys = int64_t(c.cache_frames() + 1) * c.tokens_per_frame();
    s.widest_gated_output = 6 * int64_t(c.hidden_size);
    s.largest_weight = int64_t(c.hidden_size) * c.hidden_size * std::max(c.mlp_ratio, 6);  // fc1/fc2 or adaLN
    const std::vector<int>& ch = c.vae.channels;
    for (size_t i = 0; i < ch.size(); ++i) {
      int64_t ci = ch[i];  // the level's channels or a neighbour's (upsample / downsample inputs and outputs)
      if (i + 1 < ch.size()) ci = std::max<int64_t>(ci, ch[i + 1]);
      if (i > 0) ci = std::max<int64_t>(ci, ch[i - 1]);
      s.conv_levels.push_back({int64_t(c.frame_height >> i) * (c.frame_width >> i), ci});
    }
    s.frame_height = c.frame_height;
    s.frame_width = c.frame_width;
    s.latent_channels = c.latent_channels;
    s.members = members;
    return ops::scratch_bytes_bound(s, device, dtype, threads);
  }

 private:
  // Each member's DiT member: its latent for a denoising pass, its cache-write input for the cache-write pass.
  static std::vector<DiT::Member> dit_members(const std::vector<Member>& members, bool write) {
    return members_as<DiT::Member>(members, [&](NfdSession& s, const Member& m) {
      return DiT::Member{&s.dit(), m.ctx, write ? m.write : m.latent};
    });
  }
};

}  // namespace

const Architecture& architecture() {
  static const NfdArchitecture arch;
  return arch;
}

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
