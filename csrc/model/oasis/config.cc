// The Oasis architecture's config: parse (every field checked by name and bounded, as the NFD plug-in does, so a
// hostile file cannot make a session allocate absurd amounts of memory), JSON back, the tensors of a model, and the
// noise schedule.
#include "model/oasis/config.h"

#include "model/plugin.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>

namespace nfd {
namespace model {
namespace oasis {
namespace {

using namespace config_json;

// Upper bounds (inclusive): the plug-ins' shared ones (model/plugin.h; oasis-500m is far inside them) and Oasis' own.
using namespace limits;
constexpr int kMaxNoiseLevels = 100000;
constexpr int kMaxVaeTokens = 16384;  // the ViT's attention scores of a head: tokens^2 floats
// The start noise is clamped to [-noise_clamp, noise_clamp] (upstream). The Philox normals (24-bit uniforms through
// Box-Muller, docs/rng.md) never exceed sqrt(2 * 24 ln 2) = 5.77 in magnitude, so a clamp of 6 or more is the
// identity and the runtime applies none; a smaller one is refused rather than ignored.
constexpr double kMinNoiseClamp = 6.0;

std::string num(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

void check_consistency(const OasisConfig& c) {
  const std::string hs = std::to_string(c.hidden_size), nh = std::to_string(c.num_heads);
  if (c.hidden_size % c.num_heads) bad("hidden_size " + hs + " is not divisible by num_heads " + nh);
  const int hd = c.head_dim();
  if (hd % 2) bad("head_dim " + std::to_string(hd) + " must be even (RoPE rotates pairs)");
  if (c.spatial_rope_dim < 2 || c.spatial_rope_dim % 2 || 2 * c.spatial_rope_dim > hd)
    bad("spatial_rope_dim " + std::to_string(c.spatial_rope_dim) + " must be even, >= 2 and at most head_dim / 2 (" +
        std::to_string(hd / 2) + ")");
  const OasisVAEConfig& v = c.vae;
  const struct {
    const char* what;
    int dim, heads;
  } halves[2] = {{"encoder", v.encoder_dim, v.encoder_heads}, {"decoder", v.decoder_dim, v.decoder_heads}};
  for (const auto& h : halves) {
    if (h.dim % h.heads)
      bad(std::string("VAE ") + h.what + "_dim " + std::to_string(h.dim) + " is not divisible by " + h.what +
          "_heads " + std::to_string(h.heads));
    if (v.rope_dim < 2 || v.rope_dim % 2 || 2 * v.rope_dim > h.dim / h.heads)
      bad("VAE rope_dim " + std::to_string(v.rope_dim) + " must be even, >= 2 and at most half the " + h.what +
          " head_dim (" + std::to_string(h.dim / h.heads) + ")");
  }
  if (c.frame_height % v.patch_size || c.frame_width % v.patch_size)
    bad("frame " + std::to_string(c.frame_height) + "x" + std::to_string(c.frame_width) +
        " is not divisible by the VAE patch size " + std::to_string(v.patch_size));
  if (c.latent_height() % c.patch_size || c.latent_width() % c.patch_size || c.latent_height() < c.patch_size ||
      c.latent_width() < c.patch_size)
    bad("latent " + std::to_string(c.latent_height()) + "x" + std::to_string(c.latent_width()) +
        " is not divisible by patch_size " + std::to_string(c.patch_size));
  if (c.tokens_per_frame() > kTokensPerFrame)
    bad("tokens_per_frame " + std::to_string(c.tokens_per_frame()) + " exceeds the limit " +
        std::to_string(kTokensPerFrame));
  if (c.vae_tokens() > kMaxVaeTokens)
    bad("the VAE's tokens per frame (" + std::to_string(c.vae_tokens()) + ") exceed the limit " +
        std::to_string(kMaxVaeTokens));
  if (c.beta_schedule != "sigmoid") bad("beta_schedule '" + c.beta_schedule + "' is unknown (known: 'sigmoid')");
  const std::vector<int>& ts = c.timesteps;
  for (size_t i = 0; i < ts.size(); ++i)
    if (ts[i] >= c.noise_levels || (i > 0 && ts[i] >= ts[i - 1]))
      bad("timesteps " + list_str(ts) + " must be distinct integer levels in [0, " + std::to_string(c.noise_levels) +
          "), highest first");
  if (c.context_level >= c.noise_levels)
    bad("context_level " + std::to_string(c.context_level) + " must be in [0, " + std::to_string(c.noise_levels) + ")");
  if (c.noise_clamp < kMinNoiseClamp)
    bad("noise_clamp " + num(c.noise_clamp) + " is below " + num(kMinNoiseClamp) +
        ": this runtime's Philox normals never exceed 5.77 in magnitude and it applies no clamp");
  // Memory bounds (doubles: no overflow for any in-range inputs).
  const double kv = 2.0 * c.depth * (c.max_frames + 1) * double(c.tokens_per_frame()) * c.hidden_size * 4.0;
  if (kv > kKvCacheBytes)
    bad("the temporal KV cache would need " + std::to_string(int64_t(kv / (1 << 20))) +
        " MiB (depth x (max_frames + 1) x tokens x hidden_size), over the 64 GiB limit");
  const double act = double(c.vae_tokens()) * std::max(v.encoder_dim, v.decoder_dim) * v.mlp_ratio * 4.0;
  if (act > kActivationBytes)
    bad("a VAE activation would need " + std::to_string(int64_t(act / (1 << 20))) +
        " MiB (VAE tokens x width x mlp_ratio), over the 16 GiB limit");
}

}  // namespace

Config parse_config(const json& j) {
  auto arch = std::make_shared<OasisConfig>();
  OasisConfig& c = *arch;
  Fields f(j, "");
  f.at("architecture");  // "oasis": checked by the caller, which chose this plug-in by it
  parse_transformer_dims(f, c);
  c.time_embed_dim = f.integer("time_embed_dim", 2, kTimeEmbed);
  if (c.time_embed_dim % 2) bad("field 'time_embed_dim' = " + std::to_string(c.time_embed_dim) + " must be even");
  c.action_dim = f.integer("action_dim", 1, kActionDim);
  c.norm_eps = f.number("norm_eps", 0.0, 1.0, /*lo_open=*/true);
  c.spatial_rope_dim = f.integer("spatial_rope_dim", 0, kHidden);
  c.spatial_rope_max_freq = f.number("spatial_rope_max_freq", 0.0, 1e9, true);
  c.temporal_rope_theta = f.number("temporal_rope_theta", 0.0, 1e12, true);
  c.max_frames = f.integer("max_frames", 1, kMaxCacheSlots);
  const json& sched = f.at("beta_schedule");
  if (!sched.is_string()) bad(std::string("field 'beta_schedule' must be a string, got ") + json_type(sched));
  c.beta_schedule = sched.get<std::string>();
  c.noise_levels = f.integer("noise_levels", 2, kMaxNoiseLevels);
  c.timesteps = f.int_list("timesteps", 1, 1000, 0, kMaxNoiseLevels);
  c.context_level = f.integer("context_level", 0, kMaxNoiseLevels);
  c.noise_clamp = f.number("noise_clamp", 0.0, 1e30, true);

  const json& vae = f.at("vae");
  if (!vae.is_object()) bad(std::string("field 'vae' must be an object, got ") + json_type(vae));
  Fields v(vae, "vae.");
  OasisVAEConfig& o = c.vae;
  o.patch_size = v.integer("patch_size", 1, kPatch);
  o.encoder_dim = v.integer("encoder_dim", 1, kHidden);
  o.encoder_depth = v.integer("encoder_depth", 1, kDepth);
  o.encoder_heads = v.integer("encoder_heads", 1, kHeads);
  o.decoder_dim = v.integer("decoder_dim", 1, kHidden);
  o.decoder_depth = v.integer("decoder_depth", 1, kDepth);
  o.decoder_heads = v.integer("decoder_heads", 1, kHeads);
  o.mlp_ratio = v.integer("mlp_ratio", 1, kMlpRatio);
  o.norm_eps = v.number("norm_eps", 0.0, 1.0, true);
  o.rope_dim = v.integer("rope_dim", 0, kHidden);
  o.rope_max_freq = v.number("rope_max_freq", 0.0, 1e9, true);
  o.scaling_factor = v.number("scaling_factor", 0.0, 1e6, true);
  v.reject_unknown();
  f.reject_unknown();

  check_consistency(c);
  Config g;
  g.name = c.name;
  g.architecture = "oasis";
  g.frame_height = c.frame_height;
  g.frame_width = c.frame_width;
  g.latent_channels = c.latent_channels;
  g.latent_h = c.latent_height();
  g.latent_w = c.latent_width();
  g.action_dim = c.action_dim;
  g.window = c.window();  // the ring: window = max_frames - 1 frames before the current one, no sinks
  g.sink_frames = 0;
  g.steps = c.num_steps();
  g.arch = std::move(arch);
  return g;
}

std::string config_to_json(const Config& cfg) {
  const OasisConfig& c = cfg.arch_as<OasisConfig>();
  json j;
  j["name"] = c.name;
  j["architecture"] = "oasis";
  j["frame_height"] = c.frame_height;
  j["frame_width"] = c.frame_width;
  j["latent_channels"] = c.latent_channels;
  j["patch_size"] = c.patch_size;
  j["hidden_size"] = c.hidden_size;
  j["depth"] = c.depth;
  j["num_heads"] = c.num_heads;
  j["mlp_ratio"] = c.mlp_ratio;
  j["time_embed_dim"] = c.time_embed_dim;
  j["action_dim"] = c.action_dim;
  j["norm_eps"] = c.norm_eps;
  j["spatial_rope_dim"] = c.spatial_rope_dim;
  j["spatial_rope_max_freq"] = c.spatial_rope_max_freq;
  j["temporal_rope_theta"] = c.temporal_rope_theta;
  j["max_frames"] = c.max_frames;
  j["beta_schedule"] = c.beta_schedule;
  j["noise_levels"] = c.noise_levels;
  j["timesteps"] = c.timesteps;
  j["context_level"] = c.context_level;
  j["noise_clamp"] = c.noise_clamp;
  const OasisVAEConfig& v = c.vae;
  j["vae"] = {{"patch_size", v.patch_size},       {"encoder_dim", v.encoder_dim},
              {"encoder_depth", v.encoder_depth}, {"encoder_heads", v.encoder_heads},
              {"decoder_dim", v.decoder_dim},     {"decoder_depth", v.decoder_depth},
              {"decoder_heads", v.decoder_heads}, {"mlp_ratio", v.mlp_ratio},
              {"norm_eps", v.norm_eps},           {"rope_dim", v.rope_dim},
              {"rope_max_freq", v.rope_max_freq}, {"scaling_factor", v.scaling_factor}};
  return j.dump();
}

namespace {

void add_vit_block(TensorList& out, const std::string& p, int64_t E, int64_t ratio) {
  add_norm(out, p + ".norm1", E);
  add_linear(out, p + ".qkv", E, 3 * E);
  add_linear(out, p + ".proj", E, E);
  add_norm(out, p + ".norm2", E);
  add_linear(out, p + ".fc1", E, ratio * E);
  add_linear(out, p + ".fc2", ratio * E, E);
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& config) {
  const OasisConfig& c = config.arch_as<OasisConfig>();
  TensorList out;
  const int64_t D = c.hidden_size, M = int64_t(c.mlp_ratio) * D;
  add_linear(out, "dit.patch_embed", c.patch_dim(), D);
  add_linear(out, "dit.time_embed.fc1", c.time_embed_dim, D);
  add_linear(out, "dit.time_embed.fc2", D, D);
  add_linear(out, "dit.action_embed", c.action_dim, D);
  for (int i = 0; i < c.depth; ++i)
    for (const char* sub : {"spatial", "temporal"}) {
      const std::string b = "dit.blocks." + std::to_string(i) + "." + sub;
      add_linear(out, b + ".adaln", D, 6 * D);
      add_linear(out, b + ".qkv", D, 3 * D, /*bias=*/false);
      add_linear(out, b + ".proj", D, D);
      add_linear(out, b + ".fc1", D, M);
      add_linear(out, b + ".fc2", M, D);
    }
  add_linear(out, "dit.final.adaln", D, 2 * D);
  add_linear(out, "dit.final.linear", D, c.patch_dim());
  const OasisVAEConfig& v = c.vae;
  add_linear(out, "vae.encoder.patch_embed", c.vae_patch_dim(), v.encoder_dim);
  for (int i = 0; i < v.encoder_depth; ++i)
    add_vit_block(out, "vae.encoder.blocks." + std::to_string(i), v.encoder_dim, v.mlp_ratio);
  add_norm(out, "vae.encoder.norm", v.encoder_dim);
  add_linear(out, "vae.encoder.to_latent", v.encoder_dim, c.latent_channels);
  add_linear(out, "vae.decoder.from_latent", c.latent_channels, v.decoder_dim);
  for (int i = 0; i < v.decoder_depth; ++i)
    add_vit_block(out, "vae.decoder.blocks." + std::to_string(i), v.decoder_dim, v.mlp_ratio);
  add_norm(out, "vae.decoder.norm", v.decoder_dim);
  add_linear(out, "vae.decoder.to_pixels", v.decoder_dim, c.vae_patch_dim());
  return out;
}

std::vector<float> sigmoid_alphas_cumprod(int noise_levels, double start, double end, double tau, double max_beta) {
  // As nfd_rt.configs.sigmoid_alphas_cumprod: x = linspace(0, T, T + 1) / T (numpy: exact integers / T);
  // s(x) = sigmoid((x (end - start) + start) / tau); the two constant sigmoids rounded to float32;
  // g = (v_end - s) / (v_end - v_start), g /= g[0]; beta = float32(clip(1 - g[t+1] / g[t], 0, max_beta));
  // alpha = 1 - beta in float32; alpha_bar = the running product of the alphas in float64, each rounded to float32.
  // Products and sums are separate statements: no FMA contraction, each rounded as numpy rounds it.
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  const int T = noise_levels;
  const double v_start = double(float(sig(start / tau))), v_end = double(float(sig(end / tau)));
  std::vector<double> g(size_t(T) + 1);
  for (int i = 0; i <= T; ++i) {
    const double x = double(i) / double(T);
    volatile double scaled = x * (end - start);  // volatile: one rounding per numpy operation
    const double s = sig((scaled + start) / tau);
    g[size_t(i)] = (-s + v_end) / (v_end - v_start);
  }
  const double g0 = g[0];
  for (double& x : g) x = x / g0;
  std::vector<float> out(static_cast<size_t>(T));
  double prod = 1.0;
  for (int t = 0; t < T; ++t) {
    const double beta = std::min(std::max(1.0 - g[size_t(t) + 1] / g[size_t(t)], 0.0), max_beta);
    const float alpha = 1.0f - float(beta);
    prod *= double(alpha);
    out[size_t(t)] = float(prod);
  }
  return out;
}

}  // namespace oasis
}  // namespace model
}  // namespace nfd
