// The config fields the architecture plug-ins share: the bounds every plug-in checks its fields against, the
// "name" field, and the dimensions every transformer plug-in's config has. Included by each plug-in's config.h
// (through model/plugin.h for the rest of a plug-in).
#pragma once

#include <string>

#include "core/config_json.h"

namespace nfd {
namespace model {

// Upper bounds (inclusive) of config fields: generous for real models, small enough that a hostile file cannot make
// a session allocate absurd amounts of memory (the caches and buffers are sized from the config alone).
namespace limits {
constexpr int kFrameSide = 4096;
constexpr int kChannels = 4096;
constexpr int kHidden = 16384;
constexpr int kDepth = 256;
constexpr int kHeads = 256;
constexpr int kMlpRatio = 16;
constexpr int kPatch = 64;
constexpr int kTimeEmbed = 16384;
constexpr int kActionDim = 65536;
constexpr int kTokensPerFrame = 65536;
constexpr double kKvCacheBytes = 64.0 * (1ull << 30);        // K + V, fp32, all layers
constexpr double kActivationBytes = 16.0 * (1ull << 30);     // one fp32 activation of the decoder
}  // namespace limits

// The config's "name" field: a string of at most 256 characters.
inline std::string config_name(config_json::Fields& f) {
  const config_json::json& name = f.at("name");
  if (!name.is_string()) config_json::bad(std::string("field 'name' must be a string, got ") + config_json::json_type(name));
  std::string s = name.get<std::string>();
  if (s.size() > 256) config_json::bad("field 'name' is longer than 256 characters");
  return s;
}

// The fields every transformer plug-in's config has: its name, the frames, the latent's channels, the patch and
// the transformer's width, depth, heads and MLP ratio (parse_transformer_dims: the same bounds everywhere).
struct TransformerDims {
  std::string name;
  int frame_height = 0, frame_width = 0, latent_channels = 0, patch_size = 0;
  int hidden_size = 0, depth = 0, num_heads = 0, mlp_ratio = 4;
};
inline void parse_transformer_dims(config_json::Fields& f, TransformerDims& d) {
  using namespace limits;
  d.name = config_name(f);
  d.frame_height = f.integer("frame_height", 1, kFrameSide);
  d.frame_width = f.integer("frame_width", 1, kFrameSide);
  d.latent_channels = f.integer("latent_channels", 1, kChannels);
  d.patch_size = f.integer("patch_size", 1, kPatch);
  d.hidden_size = f.integer("hidden_size", 1, kHidden);
  d.depth = f.integer("depth", 1, kDepth);
  d.num_heads = f.integer("num_heads", 1, kHeads);
  d.mlp_ratio = f.integer("mlp_ratio", 1, kMlpRatio);
}

}  // namespace model
}  // namespace nfd
