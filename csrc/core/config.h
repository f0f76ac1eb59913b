// The runtime's view of a model's config: what every architecture has (frames, latents, actions, the KV ring,
// the number of denoising passes). The architecture's own fields (its DiT, its decoder, its schedule) live in
// `arch`, parsed and read by the architecture's plug-in (model/architecture.h, model/<arch>/); the session, the
// ring, the sampler loop and the C ABI read only what is here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include "core/error.h"

namespace nfd {

// Cache slots a session can have (sinks + window + the current frame + frames generated ahead): the size of
// FrameState::visible_slots (ops/ops.h).
constexpr int kMaxCacheSlots = 1024;

// One cache group: layers that keep the same frames (an architecture's cache policy, model/architecture.h). The group
// keeps the frames j with j % stride == 0 (the others write their K/V to a scratch slot no later frame sees), and a
// frame g sees the kept frames j < g with j < sinks or g - j <= window, and itself. The NFD and Oasis models have one
// group (stride 1); Waypoint-1.5 two (local: window 15, stride 1; global: window 127, stride 8). runtime/kv_ring.h
// turns a group into ring slots.
struct CacheGroup {
  int window = 0;  // frames back a frame sees (of those the group keeps)
  int stride = 1;  // the group keeps the frames j with j % stride == 0
  int sinks = 0;   // frames j < sinks are never evicted (stride 1 only)
};

// Base of an architecture's own config (model/<arch>/config.h).
struct ArchConfig {
  virtual ~ArchConfig() = default;
};

struct Config {
  std::string name;                  // "tiny", "nfd-310m", ...
  std::string architecture = "nfd";  // the plug-in that runs it (model/architecture.h)
  int frame_height = 0, frame_width = 0;
  int latent_channels = 0, latent_h = 0, latent_w = 0;
  int action_dim = 0;
  // KV ring: a frame sees the `sink_frames` first frames, the `window` frames before it, and itself.
  int window = 0, sink_frames = 0;
  int steps = 0;  // denoising passes per frame (the cache-write pass comes after them)
  // Video frames one step decodes from its latent (Waypoint's TAEHV: 4), each uint8 [frame_height, frame_width, 3];
  // a step's frame buffer is [frames_per_step, H, W, 3] (just [H, W, 3] when 1).
  int frames_per_step = 1;
  // The cache policy: one entry per group of layers that keep the same frames. Empty: one group of `window` frames
  // and `sink_frames` sinks, stride 1 (cache_policy()).
  std::vector<CacheGroup> cache_groups;
  std::shared_ptr<const ArchConfig> arch;

  int latent_height() const { return latent_h; }
  int latent_width() const { return latent_w; }
  int latent_numel() const { return latent_channels * latent_h * latent_w; }
  int cache_frames() const { return sink_frames + window; }
  int num_steps() const { return steps; }
  std::vector<CacheGroup> cache_policy() const {
    if (!cache_groups.empty()) return cache_groups;
    CacheGroup g;
    g.window = window;
    g.sinks = sink_frames;
    return {g};
  }
  // A step's decoded frames: their shape and bytes.
  std::vector<int64_t> frame_shape() const {
    if (frames_per_step == 1) return {frame_height, frame_width, 3};
    return {frames_per_step, frame_height, frame_width, 3};
  }
  int64_t frame_bytes() const { return int64_t(frames_per_step) * frame_height * frame_width * 3; }

  // The architecture's own config; an internal error when the config belongs to another architecture.
  template <typename T>
  const T& arch_as() const {
    const T* p = dynamic_cast<const T*>(arch.get());
    NFD_CHECK(p != nullptr, internal, "config '" + name + "' of architecture '" + architecture + "' read as " +
                                          typeid(T).name());
    return *p;
  }
};

}  // namespace nfd
