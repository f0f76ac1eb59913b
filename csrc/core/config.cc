// parse_config_json: the `config` metadata entry of a .nfd file -> nfd::Config, every field checked by name.
//
// The JSON is dataclasses.asdict(NFDConfig) (python/nfd_rt/configs.py). Every field must be present with the
// right JSON type; unknown fields are rejected (a newer exporter's file should fail loudly, not run wrong).
// Besides the consistency rules of NFDConfig.__post_init__, sizes are bounded so that a hostile file cannot
// make a session allocate absurd amounts of memory (weights are backed by the file, but the KV cache and the
// activation buffers are sized from the config alone).
#include <charconv>
#include <cmath>
#include <cstdint>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/config_json.h"
#include "core/error.h"
#include "ops/ops.h"

namespace nfd {
namespace {

using json = nlohmann::json;

// Upper bounds (inclusive). Generous for real models (nfd-310m is far inside them), tiny for allocators.
constexpr int kMaxFrameSide = 4096;
constexpr int kMaxChannels = 4096;
constexpr int kMaxHidden = 16384;
constexpr int kMaxDepth = 256;
constexpr int kMaxHeads = 256;
constexpr int kMaxMlpRatio = 16;
constexpr int kMaxPatch = 64;
constexpr int kMaxTimeEmbed = 16384;
constexpr int kMaxActionDim = 65536;
constexpr int kMaxSteps = 1000;
constexpr int kMaxVaeLevels = 8;
constexpr int kMaxResBlocks = 16;
constexpr int kMaxTokensPerFrame = 65536;
constexpr double kMaxKvCacheBytes = 64.0 * (1ull << 30);      // K + V, fp32, all layers
constexpr double kMaxVaeActivationBytes = 16.0 * (1ull << 30);  // one fp32 feature map of the VAE

[[noreturn]] void bad(const std::string& msg) { fail(ErrorKind::invalid_file, msg); }

const char* json_type(const json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

// Reads the fields of one JSON object, remembering which were used so unknown ones can be reported.
class Fields {
 public:
  Fields(const json& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  const json& at(const std::string& key) {
    used_.insert(key);
    auto it = obj_.find(key);
    if (it == obj_.end()) bad("missing field '" + prefix_ + key + "'");
    return *it;
  }

  int integer(const std::string& key, long long lo, long long hi) {
    const json& v = at(key);
    if (!v.is_number_integer())
      bad("field '" + prefix_ + key + "' must be an integer, got " + json_type(v));
    long long x = v.is_number_unsigned() ? (v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
                                                                                    : (long long)v.get<uint64_t>())
                                         : v.get<long long>();
    check_range(key, x, lo, hi);
    return int(x);
  }

  double number(const std::string& key, double lo, double hi, bool lo_open = false) {
    const json& v = at(key);
    if (!v.is_number()) bad("field '" + prefix_ + key + "' must be a number, got " + json_type(v));
    return checked_number(prefix_ + key, v.get<double>(), lo, hi, lo_open);
  }

  std::vector<int> int_list(const std::string& key, size_t min_len, size_t max_len, long long lo, long long hi) {
    const json& v = at(key);
    if (!v.is_array()) bad("field '" + prefix_ + key + "' must be a list of integers, got " + json_type(v));
    if (v.size() < min_len || v.size() > max_len)
      bad("field '" + prefix_ + key + "' must have " +
          (min_len == max_len ? std::to_string(min_len) : std::to_string(min_len) + ".." + std::to_string(max_len)) +
          " entries, got " + std::to_string(v.size()));
    std::vector<int> out;
    for (size_t i = 0; i < v.size(); ++i) {
      const json& e = v[i];
      std::string name = key + "[" + std::to_string(i) + "]";
      if (!e.is_number_integer()) bad("field '" + prefix_ + name + "' must be an integer, got " + json_type(e));
      long long x = e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : e.get<long long>();
      check_range(name, x, lo, hi);
      out.push_back(int(x));
    }
    return out;
  }

  std::vector<double> number_list(const std::string& key, size_t min_len, size_t max_len) {
    const json& v = at(key);
    if (!v.is_array()) bad("field '" + prefix_ + key + "' must be a list of numbers, got " + json_type(v));
    if (v.size() < min_len || v.size() > max_len)
      bad("field '" + prefix_ + key + "' must have " + std::to_string(min_len) + ".." + std::to_string(max_len) +
          " entries, got " + std::to_string(v.size()));
    std::vector<double> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number())
        bad("field '" + prefix_ + key + "[" + std::to_string(i) + "]' must be a number, got " + json_type(v[i]));
      out.push_back(v[i].get<double>());
    }
    return out;
  }

  void reject_unknown() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it)
      if (!used_.count(it.key())) bad("unknown field '" + prefix_ + it.key() + "'");
  }

 private:
  void check_range(const std::string& key, long long x, long long lo, long long hi) const {
    if (x < lo || x > hi)
      bad("field '" + prefix_ + key + "' = " + std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "]");
  }
  static double checked_number(const std::string& name, double x, double lo, double hi, bool lo_open) {
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
      std::ostringstream s;
      s << "field '" << name << "' = " << x << " is out of range " << (lo_open ? "(" : "[") << lo << ", " << hi
        << "]";
      bad(s.str());
    }
    return x;
  }

  const json& obj_;
  std::string prefix_;
  std::set<std::string> used_;
};

std::string list_str(const std::vector<int>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

void check_consistency(const Config& c) {
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
  if (c.tokens_per_frame() > kMaxTokensPerFrame)
    fail_cfg("tokens_per_frame " + std::to_string(c.tokens_per_frame()) + " exceeds the limit " +
             std::to_string(kMaxTokensPerFrame));
  const auto& s = c.schedule;
  bool decreasing = true;
  for (size_t i = 1; i < s.size(); ++i) decreasing = decreasing && s[i] <= s[i - 1];
  if (s.empty() || s[0] != 1.0f || !decreasing) fail_cfg("schedule must start at 1.0 and decrease");
  if (s.back() <= 0.0f) fail_cfg("schedule must stay above 0 (the last Euler step goes to t=0)");
  if (c.sink_frames + c.window > FrameState::kMaxSlots - 1)
    fail_cfg("window + sink_frames = " + std::to_string(c.sink_frames + c.window) + " exceeds the limit " +
             std::to_string(FrameState::kMaxSlots - 1));
  for (int ch : c.vae.channels)
    if (ch % c.vae.norm_groups)
      fail_cfg("VAE channels " + list_str(c.vae.channels) + " must be divisible by norm_groups " +
               std::to_string(c.vae.norm_groups));
  // Memory bounds (doubles: no overflow for any in-range inputs).
  double kv = 2.0 * c.depth * (c.cache_frames() + 1) * double(c.tokens_per_frame()) * c.hidden_size * 4.0;
  if (kv > kMaxKvCacheBytes)
    fail_cfg("the KV cache would need " + std::to_string(int64_t(kv / (1 << 20))) +
             " MiB (depth x (window + sink_frames + 1) x tokens x hidden_size), over the 64 GiB limit");
  int max_ch = 0;
  for (int ch : c.vae.channels) max_ch = std::max(max_ch, ch);
  double act = double(c.frame_height) * c.frame_width * max_ch * 4.0;
  if (act > kMaxVaeActivationBytes)
    fail_cfg("a VAE feature map would need " + std::to_string(int64_t(act / (1 << 20))) +
             " MiB (frame size x widest VAE channel count), over the 16 GiB limit");
}

}  // namespace

Config parse_config_json(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    std::string what;
    for (unsigned char ch : std::string(e.what())) what += (ch >= 0x20 && ch < 0x7f) ? char(ch) : '?';
    bad("config is not valid JSON (" + what + ")");
  }
  if (!j.is_object()) bad(std::string("config must be a JSON object, got ") + json_type(j));

  Config c;
  Fields f(j, "");
  const json& name = f.at("name");
  if (!name.is_string()) bad(std::string("field 'name' must be a string, got ") + json_type(name));
  c.name = name.get<std::string>();
  if (c.name.size() > 256) bad("field 'name' is longer than 256 characters");
  c.frame_height = f.integer("frame_height", 1, kMaxFrameSide);
  c.frame_width = f.integer("frame_width", 1, kMaxFrameSide);
  c.latent_channels = f.integer("latent_channels", 1, kMaxChannels);
  c.patch_size = f.integer("patch_size", 1, kMaxPatch);
  c.hidden_size = f.integer("hidden_size", 1, kMaxHidden);
  c.depth = f.integer("depth", 1, kMaxDepth);
  c.num_heads = f.integer("num_heads", 1, kMaxHeads);
  c.mlp_ratio = f.integer("mlp_ratio", 1, kMaxMlpRatio);
  std::vector<int> rope = f.int_list("rope_dims", 3, 3, 0, kMaxHidden);
  for (int i = 0; i < 3; ++i) c.rope_dims[i] = rope[i];
  c.rope_theta = f.number("rope_theta", 0.0, 1e12, /*lo_open=*/true);
  c.time_embed_dim = f.integer("time_embed_dim", 2, kMaxTimeEmbed);
  c.action_dim = f.integer("action_dim", 1, kMaxActionDim);
  c.norm_eps = float(f.number("norm_eps", 0.0, 1.0, true));
  c.window = f.integer("window", 0, FrameState::kMaxSlots - 1);
  c.sink_frames = f.integer("sink_frames", 0, FrameState::kMaxSlots - 1);
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
  c.vae.channels = v.int_list("channels", 1, kMaxVaeLevels, 1, kMaxChannels);
  c.vae.num_res_blocks = v.integer("num_res_blocks", 1, kMaxResBlocks);
  c.vae.norm_groups = v.integer("norm_groups", 1, kMaxChannels);
  c.vae.norm_eps = float(v.number("norm_eps", 0.0, 1.0, true));
  v.reject_unknown();
  f.reject_unknown();

  check_consistency(c);
  return c;
}

namespace {
// Shortest decimal form of a float, as a double with that exact decimal value (1e-6f -> 1e-06).
double shortest(float x) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), x);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}
}  // namespace

std::string config_to_json(const Config& c) {
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
  j["norm_eps"] = shortest(c.norm_eps);
  j["window"] = c.window;
  j["sink_frames"] = c.sink_frames;
  json sched = json::array();
  for (float t : c.schedule) sched.push_back(shortest(t));
  j["schedule"] = sched;
  j["context_noise"] = shortest(c.context_noise);
  j["vae"] = {{"channels", c.vae.channels},
              {"num_res_blocks", c.vae.num_res_blocks},
              {"norm_groups", c.vae.norm_groups},
              {"norm_eps", shortest(c.vae.norm_eps)}};
  return j.dump();
}

}  // namespace nfd
