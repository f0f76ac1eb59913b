// The NFD architecture's config (python/nfd_rt/configs.py NFDConfig): the DiT, the conv VAE and the
// flow-matching schedule, with the generic geometry copied in so the plug-in reads one struct.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/config_json.h"
#include "model/config_fields.h"

namespace nfd {
namespace model {
namespace nfd_arch {

struct VAEConfig {
  std::vector<int> channels;  // per level, highest resolution first
  int num_res_blocks = 1;
  int norm_groups = 8;
  float norm_eps = 1e-6f;
  int downsample() const { return 1 << (int(channels.size()) - 1); }
};

struct NfdConfig : ArchConfig, TransformerDims {
  int rope_dims[3] = {0, 0, 0};
  double rope_theta = 10000.0;
  int time_embed_dim = 256, action_dim = 0;
  float norm_eps = 1e-6f;
  int window = 0, sink_frames = 0;
  // Euler flow matching from t = schedule[0] = 1 through the schedule to t = 0, then the cache-write pass at
  // t = context_noise.
  std::vector<float> schedule;
  float context_noise = 0.f;
  VAEConfig vae;

  int head_dim() const { return hidden_size / num_heads; }
  int latent_height() const { return frame_height / vae.downsample(); }
  int latent_width() const { return frame_width / vae.downsample(); }
  int grid_rows() const { return latent_height() / patch_size; }
  int grid_cols() const { return latent_width() / patch_size; }
  int tokens_per_frame() const { return grid_rows() * grid_cols(); }
  int patch_dim() const { return latent_channels * patch_size * patch_size; }
  int cache_frames() const { return sink_frames + window; }
  int num_steps() const { return int(schedule.size()); }
  int latent_numel() const { return latent_channels * latent_height() * latent_width(); }
};

// The NFD fields of a config JSON object (every field checked; the generic Config filled from them).
Config parse_config(const config_json::json& j);
std::string config_to_json(const Config& cfg);
// Names and shapes of every tensor an NFD model has (the PyTorch state_dict of NFDModel, in registration order).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg);

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
