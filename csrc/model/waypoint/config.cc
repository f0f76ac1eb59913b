// The Waypoint architecture's config: parse (every field checked by name and bounded, as the other plug-ins do, so a
// hostile file cannot make a session allocate absurd amounts of memory; the consistency rules of Python's
// WaypointConfig.__post_init__ with its words), JSON back, the tensors of a model.
#include "model/waypoint/config.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>

#include "model/plugin.h"

namespace nfd {
namespace model {
namespace waypoint {
namespace {

using namespace config_json;
using namespace limits;
constexpr int kMaxSigmas = 64;
constexpr int kMaxTaehvPatch = 8;
constexpr int kMaxWindow = 4096;  // frames a layer looks back

std::string num(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

std::string sigmas_str(const std::vector<double>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + num(s[i]);
  return out + ")";
}

void check_consistency(const WaypointConfig& c) {
  const TAEHVConfig& t = c.taehv;
  if (c.hidden_size % c.num_heads)
    bad("hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_heads " +
        std::to_string(c.num_heads));
  if (c.head_dim() % 8)
    bad("head_dim " + std::to_string(c.head_dim()) +
        " must be divisible by 8 (RoPE: x, y, t parts of hd/8, hd/8, hd/4 pairs)");
  if (c.num_heads % c.num_kv_heads)
    bad("num_heads " + std::to_string(c.num_heads) + " is not divisible by num_kv_heads " +
        std::to_string(c.num_kv_heads) + " (GQA)");
  if (c.noise_features % 2) bad("noise_features " + std::to_string(c.noise_features) + " must be even");
  int down = 0, up = 0;
  for (bool b : t.time_downscale) down += b;
  for (bool b : t.time_upscale) up += b;
  if (down != up)
    bad("taehv encoder time factor 2**" + std::to_string(down) + " differs from the decoder's 2**" +
        std::to_string(up));
  const int f = t.spatial_factor();
  if (c.frame_height % f || c.frame_width % f)
    bad("frame " + std::to_string(c.frame_height) + "x" + std::to_string(c.frame_width) +
        " is not divisible by the autoencoder factor " + std::to_string(f));
  if (c.latent_height() % c.patch_size || c.latent_width() % c.patch_size)
    bad("latent " + std::to_string(c.latent_height()) + "x" + std::to_string(c.latent_width()) +
        " is not divisible by patch_size " + std::to_string(c.patch_size));
  if (c.global_window % c.global_stride)
    bad("global_window " + std::to_string(c.global_window) + " is not divisible by global_stride " +
        std::to_string(c.global_stride));
  const std::vector<double>& s = c.sigmas;
  bool ok = s.size() >= 2 && s.front() == 1.0 && s.back() == 0.0;
  for (size_t i = 1; ok && i < s.size(); ++i) ok = s[i - 1] > s[i];
  if (!ok) bad("sigmas " + sigmas_str(s) + " must fall strictly from 1.0 to 0.0");
  if (c.tokens_per_frame() > kTokensPerFrame)
    bad("tokens_per_frame " + std::to_string(c.tokens_per_frame()) + " exceeds the limit " +
        std::to_string(kTokensPerFrame));
  // Memory bounds (doubles: no overflow for any in-range inputs). The caches: every layer's ring of its group.
  const double local_slots = c.local_window + 1.0, global_slots = double(c.global_window) / c.global_stride + 2.0;
  const double kv = 2.0 * c.depth * std::max(local_slots, global_slots) * c.tokens_per_frame() * c.num_kv_heads *
                    c.head_dim() * 4.0;
  if (kv > kKvCacheBytes)
    bad("the KV cache would need " + std::to_string(int64_t(kv / (1 << 20))) + " MiB, over the 64 GiB limit");
  // TAEHV's largest activation: a frame at half the autoencoder's resolution (and the output size) times the widest
  // channel count (a memory block's input holds two).
  int ch = 2 * t.encoder_channels;
  for (int d : t.decoder_channels) ch = std::max(ch, 2 * d);
  const double pixels = std::max(double(c.frame_height) * c.frame_width, double(c.output_height) * c.output_width);
  const double act = pixels * ch * 4.0 * t.frames_per_latent();
  if (act > kActivationBytes)
    bad("an autoencoder activation would need " + std::to_string(int64_t(act / (1 << 20))) +
        " MiB (frame pixels x channels x frames), over the 16 GiB limit");
}

}  // namespace

Config parse_config(const json& j) {
  auto arch = std::make_shared<WaypointConfig>();
  WaypointConfig& c = *arch;
  Fields f(j, "");
  f.at("architecture");  // "waypoint": checked by the caller, which chose this plug-in by it
  parse_transformer_dims(f, c);
  c.output_height = f.integer("output_height", 1, kFrameSide);
  c.output_width = f.integer("output_width", 1, kFrameSide);
  c.num_kv_heads = f.integer("num_kv_heads", 1, kHeads);
  c.noise_features = f.integer("noise_features", 1, kTimeEmbed);
  c.value_residual = f.boolean("value_residual");
  c.rope_theta = f.number("rope_theta", 0.0, 1e12, /*lo_open=*/true);
  c.rope_nyquist = f.number("rope_nyquist", 0.0, 1e6, true);
  c.time_stride = f.integer("time_stride", 1, 1 << 16);
  c.n_buttons = f.integer("n_buttons", 1, kActionDim - 3);
  c.control_period = f.integer("control_period", 1, kDepth);
  c.local_window = f.integer("local_window", 1, kMaxWindow);
  c.global_window = f.integer("global_window", 1, kMaxWindow);
  c.global_stride = f.integer("global_stride", 1, kMaxWindow);
  c.global_period = f.integer("global_period", 1, kDepth);
  c.global_offset = f.integer("global_offset", -kDepth, kDepth);
  c.sigmas = f.number_list("sigmas", 2, kMaxSigmas);
  for (size_t i = 0; i < c.sigmas.size(); ++i)
    if (!std::isfinite(c.sigmas[i])) bad("field 'sigmas[" + std::to_string(i) + "]' is not finite");

  const json& tj = f.at("taehv");
  if (!tj.is_object()) bad(std::string("field 'taehv' must be an object, got ") + json_type(tj));
  Fields t(tj, "taehv.");
  TAEHVConfig& tc = c.taehv;
  tc.patch_size = t.integer("patch_size", 1, kMaxTaehvPatch);
  tc.encoder_channels = t.integer("encoder_channels", 1, kChannels);
  tc.decoder_channels = t.int_list("decoder_channels", 4, 4, 1, kChannels);
  tc.time_downscale = t.bool_list("time_downscale", 3);
  tc.time_upscale = t.bool_list("time_upscale", 3);
  t.reject_unknown();
  f.reject_unknown();

  check_consistency(c);
  Config g;
  g.name = c.name;
  g.architecture = "waypoint";
  g.frame_height = c.output_height;  // what step returns and reset takes
  g.frame_width = c.output_width;
  g.latent_channels = c.latent_channels;
  g.latent_h = c.latent_height();
  g.latent_w = c.latent_width();
  g.action_dim = c.control_dim();
  // Two cache groups (docs/waypoint.md, "The cache rule"): a frame sees the kept frames less than the layer's
  // window back, so `window - 1` frames back in the runtime's terms.
  CacheGroup local, global;
  local.window = c.local_window - 1;
  global.window = c.global_window - 1;
  global.stride = c.global_stride;
  if (global.stride > global.window + 1)
    bad("global_stride " + std::to_string(c.global_stride) + " exceeds global_window " +
        std::to_string(c.global_window));
  g.cache_groups = {local, global};
  g.window = local.window;  // the first group's, for nfd_session_info
  g.sink_frames = 0;
  g.steps = c.num_steps();
  g.frames_per_step = c.taehv.frames_per_latent();
  g.arch = std::move(arch);
  return g;
}

std::string config_to_json(const Config& cfg) {
  const WaypointConfig& c = cfg.arch_as<WaypointConfig>();
  json j;
  j["architecture"] = "waypoint";
  j["name"] = c.name;
  j["frame_height"] = c.frame_height;
  j["frame_width"] = c.frame_width;
  j["output_height"] = c.output_height;
  j["output_width"] = c.output_width;
  j["latent_channels"] = c.latent_channels;
  j["patch_size"] = c.patch_size;
  j["hidden_size"] = c.hidden_size;
  j["depth"] = c.depth;
  j["num_heads"] = c.num_heads;
  j["num_kv_heads"] = c.num_kv_heads;
  j["mlp_ratio"] = c.mlp_ratio;
  j["noise_features"] = c.noise_features;
  j["value_residual"] = c.value_residual;
  j["rope_theta"] = c.rope_theta;
  j["rope_nyquist"] = c.rope_nyquist;
  j["time_stride"] = c.time_stride;
  j["n_buttons"] = c.n_buttons;
  j["control_period"] = c.control_period;
  j["local_window"] = c.local_window;
  j["global_window"] = c.global_window;
  j["global_stride"] = c.global_stride;
  j["global_period"] = c.global_period;
  j["global_offset"] = c.global_offset;
  j["sigmas"] = c.sigmas;
  const TAEHVConfig& t = c.taehv;
  j["taehv"] = {{"patch_size", t.patch_size},
                {"encoder_channels", t.encoder_channels},
                {"decoder_channels", t.decoder_channels},
                {"time_downscale", t.time_downscale},
                {"time_upscale", t.time_upscale}};
  return j.dump();
}

namespace {
void add_conv(TensorList& out, const std::string& p, int64_t cin, int64_t cout, int64_t k, bool bias) {
  out.push_back({p + ".weight", {cout, cin, k, k}});
  if (bias) out.push_back({p + ".bias", {cout}});
}
void add_memblock(TensorList& out, const std::string& p, int64_t n) {
  add_conv(out, p + ".conv1", 2 * n, n, 3, true);
  add_conv(out, p + ".conv2", n, n, 3, true);
  add_conv(out, p + ".conv3", n, n, 3, true);
}
}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& config) {
  const WaypointConfig& c = config.arch_as<WaypointConfig>();
  TensorList out;
  const int64_t D = c.hidden_size, M = int64_t(c.mlp_ratio) * D;
  add_linear(out, "dit.patch_embed", c.patch_dim(), D, false);
  add_linear(out, "dit.noise_embed.fc1", c.noise_features, 4 * D, false);
  add_linear(out, "dit.noise_embed.fc2", 4 * D, D, false);
  add_linear(out, "dit.control_embed.fc1", c.control_dim(), M, false);
  add_linear(out, "dit.control_embed.fc2", M, D, false);
  add_linear(out, "dit.mod_proj", D, 6 * D, false);
  for (int l = 0; l < c.depth; ++l) {
    const std::string b = "dit.blocks." + std::to_string(l);
    out.push_back({b + ".attn_mod_bias", {D}});
    out.push_back({b + ".mlp_mod_bias", {D}});
    out.push_back({b + ".v_mix", {1}});
    add_linear(out, b + ".qkv", D, c.qkv_width(), false);
    add_linear(out, b + ".out", D, D, false);
    if (c.has_control_fusion(l)) {
      add_linear(out, b + ".fusion_x", D, D, false);
      add_linear(out, b + ".fusion_c", D, D, false);
      add_linear(out, b + ".fusion_out", D, D, false);
    }
    add_linear(out, b + ".fc1", D, M, false);
    add_linear(out, b + ".fc2", M, D, false);
  }
  add_linear(out, "dit.final_mod", D, 2 * D, false);
  add_linear(out, "dit.final", D, c.patch_dim());
  const TAEHVConfig& t = c.taehv;
  const int64_t E = t.encoder_channels, p2 = int64_t(t.patch_size) * t.patch_size;
  add_conv(out, "taehv.encoder.conv_in", 3 * p2, E, 3, true);
  for (int s = 0; s < 3; ++s)
    add_conv(out, "taehv.encoder.pools." + std::to_string(s), E * (t.time_downscale[size_t(s)] ? 2 : 1), E, 1, false);
  for (int s = 0; s < 3; ++s) add_conv(out, "taehv.encoder.downs." + std::to_string(s), E, E, 3, false);
  for (int s = 0; s < 3; ++s)
    for (int b = 0; b < 3; ++b)
      add_memblock(out, "taehv.encoder.blocks." + std::to_string(s) + "." + std::to_string(b), E);
  add_conv(out, "taehv.encoder.conv_out", E, c.latent_channels, 3, true);
  const std::vector<int>& ch = t.decoder_channels;
  add_conv(out, "taehv.decoder.conv_in", c.latent_channels, ch[0], 3, true);
  for (int s = 0; s < 3; ++s)
    for (int b = 0; b < 3; ++b)
      add_memblock(out, "taehv.decoder.blocks." + std::to_string(s) + "." + std::to_string(b), ch[size_t(s)]);
  for (int s = 0; s < 3; ++s)
    add_conv(out, "taehv.decoder.grows." + std::to_string(s), ch[size_t(s)],
             int64_t(ch[size_t(s)]) * (t.time_upscale[size_t(s)] ? 2 : 1), 1, false);
  for (int s = 0; s < 3; ++s)
    add_conv(out, "taehv.decoder.convs." + std::to_string(s), ch[size_t(s)], ch[size_t(s) + 1], 3, false);
  add_conv(out, "taehv.decoder.conv_out", ch[3], 3 * p2, 3, true);
  return out;
}

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
