// The runtime's view of a model's config: what every architecture has (frames, latents, actions, the KV ring,
// the number of denoising passes). The architecture's own fields (its DiT, its decoder, its schedule) live in
// `arch`, parsed and read by the architecture's plug-in (model/architecture.h, model/<arch>/); the session, the
// ring, the sampler loop and the C ABI read only what is here.
#pragma once

#include <memory>
#include <string>
#include <typeinfo>

#include "core/error.h"

namespace nfd {

// Cache slots a session can have (sinks + window + the current frame + frames generated ahead): the size of
// FrameState::visible_slots (ops/ops.h).
constexpr int kMaxCacheSlots = 1024;

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
  std::shared_ptr<const ArchConfig> arch;

  int latent_height() const { return latent_h; }
  int latent_width() const { return latent_w; }
  int latent_numel() const { return latent_channels * latent_h * latent_w; }
  int cache_frames() const { return sink_frames + window; }
  int num_steps() const { return steps; }

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
