// The Waypoint-1.5 architecture (docs/waypoint.md): a rectified-flow DiT with GQA, QK-norm, a value residual and
// control fusion blocks over per-layer ring caches (local and dilated global layers: two cache groups), sampled by
// Euler steps over the config's sigmas, then one commit pass at sigma 0 that writes the frame's K/V; a streaming
// TAEHV decoder turns each latent into frames_per_latent frames. The graph is model/waypoint/dit.cc and taehv.cc
// over the shared ops; this file plugs them into the runtime (model/architecture.h).
#include <algorithm>
#include <memory>

#include "model/architecture.h"
#include "model/plugin.h"
#include "model/waypoint/config.h"
#include "model/waypoint/dit.h"
#include "model/waypoint/taehv.h"
#include "ops/scratch_bound.h"

namespace nfd {
namespace model {
namespace waypoint {
namespace {

struct WaypointWeights : Weights {
  DiTWeights dit;
  TAEHVWeights taehv;
  WaypointWeights(const ModelFile& file, const WaypointConfig& c, Arena& arena, const Context& ctx, DType dtype)
      : dit(file, c, arena, ctx, dtype), taehv(file, c, arena, ctx, dtype) {}
};

class WaypointSession : public SessionGraph {
 public:
  WaypointSession(const WaypointConfig& c, const WaypointWeights& w, Arena& arena, DType dtype,
                  const std::vector<int>& cache_slots)
      : cfg_(c),
        dit_(c, w.dit, arena, dtype, cache_slots),
        decoder_(c, w.taehv, arena, dtype),
        encoder_(c, w.taehv, arena, dtype) {}

  void prepare_kernels(const Context& ctx, const Tensor& action) override { dit_.prepare_kernels(ctx, action); }
  void condition(const Context& ctx, const Tensor& action) override { dit_.condition(ctx, action); }
  // Philox noise of the frame (docs/rng.md), step 0: the reference's latent_noise(seed, frame, 0).
  void start_latent(const Context& ctx, uint64_t seed, Tensor& latent) override {
    ops::noise_mix(ctx, seed, 0, 0.f, Tensor{}, 1.f, latent);
  }
  // The commit pass reads the finished latent as it is (sigma 0).
  void write_input(const Context& ctx, uint64_t seed, const Tensor& latent, Tensor& write) override {
    ops::copy(ctx, latent, write);
  }
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel) override {
    return decoder_.decode(ctx, latent, frame, cancel);
  }
  // The context frames of one latent (a reset's clip, latent by latent after reset_state).
  void encode(const Context& ctx, const Tensor& frame, Tensor& latent) override {
    encoder_.encode(ctx, frame, latent);
  }
  void copy_state_from(const Context& ctx, const SessionGraph& other) override {
    const WaypointSession& o = static_cast<const WaypointSession&>(other);
    dit_.copy_cache_from(ctx, o.dit_);
    decoder_.copy_state_from(ctx, o.decoder_);
  }
  size_t kv_cache_bytes() const override { return dit_.kv_cache_bytes(); }
  void reset_state(const Context& ctx) override {
    decoder_.reset(ctx);
    encoder_.reset(ctx);
  }
  bool decoder_keeps_state() const override { return true; }
  // Per group the K/V of its slots (group 0 then 1), then the decoder's temporal state.
  size_t state_bytes(const std::vector<int>& counts) const override {
    size_t n = decoder_.state_bytes();
    for (int g = 0; g < 2; ++g) n += size_t(counts.at(size_t(g))) * dit_.slot_bytes(g);
    return n;
  }
  void save_state(const Context& ctx, const std::vector<std::vector<int>>& slots, uint8_t* out) const override {
    for (int g = 0; g < 2; ++g) {
      dit_.save_slots(ctx, g, slots.at(size_t(g)), out);
      out += slots[size_t(g)].size() * dit_.slot_bytes(g);
    }
    decoder_.save_state(ctx, out);
  }
  void load_state(const Context& ctx, const std::vector<std::vector<int>>& slots, const uint8_t* in) override {
    for (int g = 0; g < 2; ++g) {
      dit_.load_slots(ctx, g, slots.at(size_t(g)), in);
      in += slots[size_t(g)].size() * dit_.slot_bytes(g);
    }
    decoder_.load_state(ctx, in);
  }

  DiT& dit() { return dit_; }
  const WaypointConfig& config() const { return cfg_; }

 private:
  const WaypointConfig& cfg_;
  DiT dit_;
  Decoder decoder_;
  Encoder encoder_;  // only a reset's context runs it: its state is not part of fork or snapshots
};

using Plugin = PluginArchitecture<WaypointConfig, WaypointWeights, WaypointSession, DiT::Activations,
                                  &waypoint::parse_config, &waypoint::config_to_json, &waypoint::expected_tensors>;

class WaypointArchitecture : public Plugin {
 public:
  const char* name() const override { return "waypoint"; }
  void denoise_pass(const std::vector<Member>& members, int k, Activations& act) const override {
    const WaypointConfig& c = session_of(members.at(0)).config();
    const float dt = float(c.sigmas.at(size_t(k) + 1) - c.sigmas.at(size_t(k)));
    DiT::denoise_pass(dit_members(members, false), k, dt, static_cast<DiT::Activations&>(act));
  }
  void cache_write_pass(const std::vector<Member>& members, Activations& act) const override {
    DiT::commit_pass(dit_members(members, true), static_cast<DiT::Activations&>(act));
  }
  size_t scratch_bytes_bound(const Config& cfg, Device device, DType dtype, int threads,
                             int members) const override {
    const WaypointConfig& c = cfg.arch_as<WaypointConfig>();
    const TAEHVConfig& t = c.taehv;
    const int64_t D = c.hidden_size, N = c.tokens_per_frame();
    ops::ScratchShapes s;
    s.tokens = N;
    s.hidden = D;
    s.heads = c.num_heads;
    s.head_dim = c.head_dim();
    // The most keys a layer sees: its group's frames in view and the frame itself.
    s.keys = N * (std::max(c.local_window, c.global_window / c.global_stride) + 1);
    s.widest_gated_output = std::max<int64_t>(D, c.qkv_width());
    s.largest_weight = std::max<int64_t>(D * D * c.mlp_ratio, int64_t(c.qkv_width()) * D);
    // The decoder's levels: the latent's size, then 2x per stage; a memory block's conv1 reads 2 ch_s channels,
    // grow_s writes ch_s * stride, the head 3 p^2; the frame level (the shuffle, the resize).
    const std::vector<int>& ch = t.decoder_channels;
    int64_t H = c.latent_height(), W = c.latent_width();
    for (int lv = 0; lv <= 3; ++lv) {
      int64_t cm = std::max<int64_t>(c.latent_channels, ch[size_t(lv)]);
      if (lv < 3) cm = std::max<int64_t>({cm, 2 * int64_t(ch[size_t(lv)]), ch[size_t(lv) + 1]});
      if (lv == 3) cm = std::max<int64_t>(cm, 3 * t.patch_size * t.patch_size);
      s.conv_levels.push_back({H * W, cm});
      H *= 2;
      W *= 2;
    }
    // The encoder's levels: the unshuffled frame (3 p^2 channels), then 2x smaller per stage; a memory block's conv1
    // and a pool read 2 E channels.
    const int64_t E = t.encoder_channels, p2 = int64_t(t.patch_size) * t.patch_size;
    for (int lv = 0; lv <= 3; ++lv)
      s.conv_levels.push_back({int64_t(c.frame_height / t.patch_size >> lv) * (c.frame_width / t.patch_size >> lv),
                               std::max(2 * E, p2 * 3)});
    s.conv_levels.push_back({std::max<int64_t>(int64_t(c.frame_height) * c.frame_width,
                                               int64_t(c.output_height) * c.output_width), 3});
    s.frame_height = std::max(c.frame_height, c.output_height);
    s.frame_width = std::max(c.frame_width, c.output_width);
    s.latent_channels = c.latent_channels;
    s.members = members;
    return ops::scratch_bytes_bound(s, device, dtype, threads);
  }

 private:
  static std::vector<DiT::Member> dit_members(const std::vector<Member>& members, bool write) {
    return members_as<DiT::Member>(members, [&](WaypointSession& s, const Member& m) {
      return DiT::Member{&s.dit(), m.ctx, write ? m.write : m.latent};
    });
  }
};

}  // namespace

const Architecture& architecture() {
  static const WaypointArchitecture arch;
  return arch;
}

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
