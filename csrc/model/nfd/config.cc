// The NFD architecture's config: parse (every field checked by name and bounded, so that a hostile file cannot
// make a session allocate absurd amounts of memory: the KV cache and the activation buffers are sized from the
// config alone), JSON back, and the tensors a model of a config has.
#include "model/nfd/config.h"

#include <algorithm>
#include <memory>

#include "core/config_json.h"
#include "model/plugin.h"

namespace nfd {
namespace model {
namespace nfd_arch {
namespace {

using namespace config_json;

// Upper bounds (inclusive): the plug-ins' shared ones (model/plugin.h; nfd-310m is far inside them) and the NFD's own.
using namespace limits;
constexpr int kMaxSteps = 1000;
constexpr int kMaxVaeLevels = 8;
constexpr int kMaxResBlocks = 16;

void check_consistency(const NfdConfig& c) {
  auto fail_cfg = [](const std::string& m) { bad(m); };
  if (c.hidden_size % c.num_heads)
    fail_cfg("hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_heads " +
             std::to_string(c.num_heads));
  int hd = c.head_dim();
  for (int d : c.rope_dims)
    if (d % 2) fail_cfg("rope_dims " + list_str({c.rope_dims[0], c.rope_dims[1], c.rope_dims[2]}) + " must all be even");
  if (c.rope_dims[0] + c.rope_dims[1] + c.rope_dims[2] != hd)
    fail_cfg("rope_dims " + list_str({c.rope_dims[0], c.rope_dims[1], c.rope_dims[2]}) + " must sum to head_dim " +
             std::to_string(hd));
  if (c.time_embed_dim % 2) fail_cfg("time_embed_dim " + std::to_string(c.time_embed_dim) + " must be even");
  int ds = c.vae.downsample();
  if (c.frame_height % ds || c.frame_width % ds)
    fail_cfg("frame " + std::to_string(c.frame_height) + "x" + std::to_string(c.frame_width) +
             " is not divisible by the VAE factor " + std::to_string(ds));
  if (c.latent_height() % c.patch_size || c.latent_width() % c.patch_size)
    fail_cfg("latent " + std::to_string(c.latent_height()) + "x" + std::to_string(c.latent_width()) +
             " is not divisible by patch_size " + std::to_string(c.patch_size));
  if (c.latent_height() < c.patch_size || c.latent_width() < c.patch_size)
    fail_cfg("latent " + std::to_string(c.latent_height()) + "x" + std::to_string(c.latent_width()) +
             " is smaller than one patch");
  if (c.tokens_per_frame() > kTokensPerFrame)
    fail_cfg("tokens_per_frame " + std::to_string(c.tokens_per_frame()) + " exceeds the limit " +
             std::to_string(kTokensPerFrame));
  const auto& s = c.schedule;
  bool decreasing = true;
  for (size_t i = 1; i < s.size(); ++i) decreasing = decreasing && s[i] <= s[i - 1];
  if (s.empty() || s[0] != 1.0f || !decreasing) fail_cfg("schedule must start at 1.0 and decrease");
  if (s.back() <= 0.0f) fail_cfg("schedule must stay above 0 (the last Euler step goes to t=0)");
  if (c.sink_frames + c.window > kMaxCacheSlots - 1)
    fail_cfg("window + sink_frames = " + std::to_string(c.sink_frames + c.window) + " exceeds the limit " +
             std::to_string(kMaxCacheSlots - 1));
  for (int ch : c.vae.channels)
    if (ch % c.vae.norm_groups)
      fail_cfg("VAE channels " + list_str(c.vae.channels) + " must be divisible by norm_groups " +
               std::to_string(c.vae.norm_groups));
  // Memory bounds (doubles: no overflow for any in-range inputs).
  double kv = 2.0 * c.depth * (c.cache_frames() + 1) * double(c.tokens_per_frame()) * c.hidden_size * 4.0;
  if (kv > kKvCacheBytes)
    fail_cfg("the KV cache would need " + std::to_string(int64_t(kv / (1 << 20))) +
             " MiB (depth x (window + sink_frames + 1) x tokens x hidden_size), over the 64 GiB limit");
  int max_ch = 0;
  for (int ch : c.vae.channels) max_ch = std::max(max_ch, ch);
  double act = double(c.frame_height) * c.frame_width * max_ch * 4.0;
  if (act > kActivationBytes)
    fail_cfg("a VAE feature map would need " + std::to_string(int64_t(act / (1 << 20))) +
             " MiB (frame size x widest VAE channel count), over the 16 GiB limit");
}

}  // namespace

Config parse_config(const json& j) {
  auto arch = std::make_shared<NfdConfig>();
  NfdConfig& c = *arch;
  Fields f(j, "");
  if (j.contains("architecture")) f.at("architecture");  // "nfd": checked by the caller
  parse_transformer_dims(f, c);
  std::vector<int> rope = f.int_list("rope_dims", 3, 3, 0, kHidden);
  for (int i = 0; i < 3; ++i) c.rope_dims[i] = rope[i];
  c.rope_theta = f.number("rope_theta", 0.0, 1e12, /*lo_open=*/true);
  c.time_embed_dim = f.integer("time_embed_dim", 2, kTimeEmbed);
  c.action_dim = f.integer("action_dim", 1, kActionDim);
  c.norm_eps = float(f.number("norm_eps", 0.0, 1.0, true));
  c.window = f.integer("window", 0, kMaxCacheSlots - 1);
  c.sink_frames = f.integer("sink_frames", 0, kMaxCacheSlots - 1);
  for (double t : f.number_list("schedule", 1, kMaxSteps)) {
    if (!(t >= 0.0 && t <= 1.0)) bad("field 'schedule' entries must be in [0, 1], got " + std::to_string(t));
    c.schedule.push_back(float(t));
  }
  double cn = f.number("context_noise", 0.0, 1.0);
  if (cn >= 1.0) bad("field 'context_noise' = 1 must be in [0, 1)");
  c.context_noise = float(cn);

  const json& vae = f.at("vae");
  if (!vae.is_object()) bad(std::string("field 'vae' must be an object, got ") + json_type(vae));
  Fields v(vae, "vae.");
  c.vae.channels = v.int_list("channels", 1, kMaxVaeLevels, 1, kChannels);
  c.vae.num_res_blocks = v.integer("num_res_blocks", 1, kMaxResBlocks);
  c.vae.norm_groups = v.integer("norm_groups", 1, kChannels);
  c.vae.norm_eps = float(v.number("norm_eps", 0.0, 1.0, true));
  v.reject_unknown();
  f.reject_unknown();

  check_consistency(c);
  Config g;
  g.name = c.name;
  g.architecture = "nfd";
  g.frame_height = c.frame_height;
  g.frame_width = c.frame_width;
  g.latent_channels = c.latent_channels;
  g.latent_h = c.latent_height();
  g.latent_w = c.latent_width();
  g.action_dim = c.action_dim;
  g.window = c.window;
  g.sink_frames = c.sink_frames;
  g.steps = c.num_steps();
  g.arch = std::move(arch);
  return g;
}

std::string config_to_json(const Config& cfg) {
  const NfdConfig& c = cfg.arch_as<NfdConfig>();
  json j;
  j["name"] = c.name;
  j["frame_height"] = c.frame_height;
  j["frame_width"] = c.frame_width;
  j["latent_channels"] = c.latent_channels;
  j["patch_size"] = c.patch_size;
  j["hidden_size"] = c.hidden_size;
  j["depth"] = c.depth;
  j["num_heads"] = c.num_heads;
  j["mlp_ratio"] = c.mlp_ratio;
  j["rope_dims"] = {c.rope_dims[0], c.rope_dims[1], c.rope_dims[2]};
  j["rope_theta"] = c.rope_theta;
  j["time_embed_dim"] = c.time_embed_dim;
  j["action_dim"] = c.action_dim;
  j["norm_eps"] = config_json::shortest(c.norm_eps);
  j["window"] = c.window;
  j["sink_frames"] = c.sink_frames;
  json sched = json::array();
  for (float t : c.schedule) sched.push_back(config_json::shortest(t));
  j["schedule"] = sched;
  j["context_noise"] = config_json::shortest(c.context_noise);
  j["vae"] = {{"channels", c.vae.channels},
              {"num_res_blocks", c.vae.num_res_blocks},
              {"norm_groups", c.vae.norm_groups},
              {"norm_eps", config_json::shortest(c.vae.norm_eps)}};
  return j.dump();
}

namespace {

using Shapes = TensorList;

void add_conv(Shapes& out, const std::string& p, int64_t cin, int64_t cout, int64_t k) {
  out.push_back({p + ".weight", {cout, cin, k, k}});
  out.push_back({p + ".bias", {cout}});
}
void add_resblock(Shapes& out, const std::string& p, int64_t cin, int64_t cout) {
  add_norm(out, p + ".norm1", cin);
  add_conv(out, p + ".conv1", cin, cout, 3);
  add_norm(out, p + ".norm2", cout);
  add_conv(out, p + ".conv2", cout, cout, 3);
  if (cin != cout) add_conv(out, p + ".skip", cin, cout, 1);
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& config) {
  const NfdConfig& cfg = config.arch_as<NfdConfig>();
  Shapes out;
  const int64_t D = cfg.hidden_size, M = int64_t(cfg.mlp_ratio) * D;
  add_linear(out, "dit.patch_embed", cfg.patch_dim(), D);
  add_linear(out, "dit.time_embed.fc1", cfg.time_embed_dim, D);
  add_linear(out, "dit.time_embed.fc2", D, D);
  add_linear(out, "dit.action_embed.fc1", cfg.action_dim, D);
  add_linear(out, "dit.action_embed.fc2", D, D);
  for (int i = 0; i < cfg.depth; ++i) {
    const std::string b = "dit.blocks." + std::to_string(i);
    add_linear(out, b + ".adaln", D, 6 * D);
    add_linear(out, b + ".qkv", D, 3 * D);
    add_linear(out, b + ".proj", D, D);
    add_linear(out, b + ".fc1", D, M);
    add_linear(out, b + ".fc2", M, D);
  }
  add_linear(out, "dit.final.adaln", D, 2 * D);
  add_linear(out, "dit.final.linear", D, cfg.patch_dim());

  const auto& ch = cfg.vae.channels;
  const int L = int(ch.size());
  // Encoder: highest resolution first; every level but the last ends with a stride-2 conv.
  add_conv(out, "vae.encoder.conv_in", 3, ch[0], 3);
  int64_t cin = ch[0];
  for (int i = 0; i < L; ++i) {
    const std::string lv = "vae.encoder.levels." + std::to_string(i);
    for (int j = 0; j < cfg.vae.num_res_blocks; ++j) {
      add_resblock(out, lv + ".blocks." + std::to_string(j), cin, ch[i]);
      cin = ch[i];
    }
    if (i < L - 1) add_conv(out, lv + ".downsample", cin, cin, 3);
  }
  add_norm(out, "vae.encoder.norm_out", ch[L - 1]);
  add_conv(out, "vae.encoder.conv_out", ch[L - 1], cfg.latent_channels, 3);
  // Decoder: lowest resolution first (levels[k] has channels ch[L-1-k]); all but the last upsample.
  add_conv(out, "vae.decoder.conv_in", cfg.latent_channels, ch[L - 1], 3);
  cin = ch[L - 1];
  for (int k = 0; k < L; ++k) {
    const int i = L - 1 - k;
    const std::string lv = "vae.decoder.levels." + std::to_string(k);
    for (int j = 0; j < cfg.vae.num_res_blocks; ++j) {
      add_resblock(out, lv + ".blocks." + std::to_string(j), cin, ch[i]);
      cin = ch[i];
    }
    if (i > 0) add_conv(out, lv + ".upsample", cin, cin, 3);
  }
  add_norm(out, "vae.decoder.norm_out", ch[0]);
  add_conv(out, "vae.decoder.conv_out", ch[0], 3, 3);
  return out;
}

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
