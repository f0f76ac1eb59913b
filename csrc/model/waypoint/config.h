// The Waypoint-1.5 architecture's config (python/nfd_rt/configs_waypoint.py WaypointConfig, docs/waypoint.md): the
// DiT (GQA, QK-norm, value residual, control fusion blocks, adaLN over the noise level), its two cache groups
// (local and dilated global layers), the rectified-flow sigmas, the TAEHV autoencoder (4 frames per latent). Floats
// are kept as the JSON's doubles, so the config JSON comes back as Python's to_json wrote it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/config_json.h"
#include "model/config_fields.h"

namespace nfd {
namespace model {
namespace waypoint {

struct TAEHVConfig {
  int patch_size = 2;
  int encoder_channels = 64;
  std::vector<int> decoder_channels = {256, 128, 64, 64};
  std::vector<bool> time_downscale = {true, true, false};  // encoder stages that halve the frame rate
  std::vector<bool> time_upscale = {false, true, true};    // decoder stages that double it
  int spatial_factor() const { return patch_size * 8; }
  int frames_per_latent() const {
    int f = 1;
    for (bool t : time_upscale) f *= t ? 2 : 1;
    return f;
  }
};

// TransformerDims: frame_height x frame_width are the autoencoder's frames.
struct WaypointConfig : ArchConfig, TransformerDims {
  int output_height = 0, output_width = 0;  // the frames a session returns and takes (bilinear resize between)
  int num_kv_heads = 0, noise_features = 0;
  bool value_residual = true;
  double rope_theta = 10000.0, rope_nyquist = 0.8;
  int time_stride = 1;
  int n_buttons = 0, control_period = 3;
  int local_window = 0, global_window = 0, global_stride = 1, global_period = 1, global_offset = 0;
  std::vector<double> sigmas;  // from 1.0 to 0.0: num_steps() Euler steps, the commit pass at the last (0)
  TAEHVConfig taehv;

  int head_dim() const { return hidden_size / num_heads; }
  int latent_height() const { return frame_height / taehv.spatial_factor(); }
  int latent_width() const { return frame_width / taehv.spatial_factor(); }
  int grid_rows() const { return latent_height() / patch_size; }
  int grid_cols() const { return latent_width() / patch_size; }
  int tokens_per_frame() const { return grid_rows() * grid_cols(); }
  int patch_dim() const { return latent_channels * patch_size * patch_size; }
  int control_dim() const { return n_buttons + 3; }
  int qkv_width() const { return (num_heads + 2 * num_kv_heads) * head_dim(); }
  int num_steps() const { return int(sigmas.size()) - 1; }
  int passes() const { return int(sigmas.size()); }  // the Euler passes, then the commit pass at sigma 0
  // Layer l is global when (l - global_offset) % global_period == 0 (Python's modulo: never negative).
  bool is_global(int l) const {
    const int r = (l - global_offset) % global_period;
    return (r + global_period) % global_period == 0;
  }
  bool has_control_fusion(int l) const { return l % control_period == 0; }
  // The cache group of layer l: 0 local, 1 global (Config::cache_groups, in that order).
  int group_of(int l) const { return is_global(l) ? 1 : 0; }
};

// The Waypoint fields of a config JSON object (every field checked and bounded; the generic Config filled).
Config parse_config(const config_json::json& j);
std::string config_to_json(const Config& cfg);
// Names and shapes of every tensor a Waypoint model has (the state_dict of python's WaypointModel, in order).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg);

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
