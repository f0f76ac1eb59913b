// The Oasis architecture's config (python/nfd_rt/configs.py OasisConfig, docs/oasis.md): the DiT of spatial +
// causal temporal sub-blocks, the ViT VAE, the DDIM v-prediction sampler over the sigmoid beta schedule. Floats
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
namespace oasis {

struct OasisVAEConfig {
  int patch_size = 20;
  int encoder_dim = 1024, encoder_depth = 6, encoder_heads = 16;
  int decoder_dim = 1024, decoder_depth = 12, decoder_heads = 16;
  int mlp_ratio = 4;
  double norm_eps = 1e-6;
  int rope_dim = 16;  // rope_dim / 2 frequencies per axis: the first rope_dim pairs of a head rotate
  double rope_max_freq = 576.0;
  double scaling_factor = 0.07843137255;  // DiT latent = encoder mean * scaling_factor
};

struct OasisConfig : ArchConfig, TransformerDims {
  int time_embed_dim = 256, action_dim = 0;
  double norm_eps = 1e-6;
  int spatial_rope_dim = 0;
  double spatial_rope_max_freq = 256.0;
  double temporal_rope_theta = 10000.0;
  int max_frames = 0;  // a frame sees itself and the max_frames - 1 frames before it
  std::string beta_schedule = "sigmoid";
  int noise_levels = 1000;
  std::vector<int> timesteps;  // the DDIM steps' noise levels, highest first
  int context_level = 14;      // the level context frames (and the cache-write pass) are labelled with
  double noise_clamp = 20.0;
  OasisVAEConfig vae;

  int head_dim() const { return hidden_size / num_heads; }
  int latent_height() const { return frame_height / vae.patch_size; }
  int latent_width() const { return frame_width / vae.patch_size; }
  int grid_rows() const { return latent_height() / patch_size; }
  int grid_cols() const { return latent_width() / patch_size; }
  int tokens_per_frame() const { return grid_rows() * grid_cols(); }
  int patch_dim() const { return latent_channels * patch_size * patch_size; }
  int vae_tokens() const { return latent_height() * latent_width(); }
  int vae_patch_dim() const { return 3 * vae.patch_size * vae.patch_size; }
  int window() const { return max_frames - 1; }
  int num_steps() const { return int(timesteps.size()); }
};

// The Oasis fields of a config JSON object (every field checked and bounded; the generic Config filled).
Config parse_config(const config_json::json& j);
std::string config_to_json(const Config& cfg);
// Names and shapes of every tensor an Oasis model has (the state_dict of python's OasisModel, in order).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg);

// alpha_bar[t] of the sigmoid beta schedule for t in [0, noise_levels), float32, computed as
// nfd_rt.configs.sigmoid_alphas_cumprod does (float64 with its float32 roundings, in its order).
std::vector<float> sigmoid_alphas_cumprod(int noise_levels, double start = -3.0, double end = 3.0, double tau = 1.0,
                                          double max_beta = 0.999);

}  // namespace oasis
}  // namespace model
}  // namespace nfd
