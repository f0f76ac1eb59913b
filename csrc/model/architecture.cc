// The registry of model architectures, and the config JSON entry points that dispatch to them.
#include "model/architecture.h"

#include <utility>

namespace nfd {
namespace model {

// One line per architecture: its plug-in (model/<arch>/<arch>.cc).
namespace nfd_arch {
const Architecture& architecture();
}
namespace oasis {
const Architecture& architecture();
}
namespace waypoint {
const Architecture& architecture();
}

namespace {
const std::vector<std::pair<std::string, const Architecture*>>& registry() {
  static const std::vector<std::pair<std::string, const Architecture*>> r = {
      {"nfd", &nfd_arch::architecture()},
      {"oasis", &oasis::architecture()},
      {"waypoint", &waypoint::architecture()},
  };
  return r;
}
}  // namespace

const Architecture& architecture(const std::string& name) {
  for (const auto& [n, a] : registry())
    if (n == name) return *a;
  std::string known;
  for (const auto& [n, a] : registry()) known += (known.empty() ? "'" : ", '") + n + "'";
  fail(ErrorKind::invalid_file, "unknown architecture '" + name + "' (this nfd_rt runs " + known + ")");
}

std::vector<std::string> architecture_names() {
  std::vector<std::string> out;
  for (const auto& [n, a] : registry()) out.push_back(n);
  return out;
}

}  // namespace model

Config parse_config_json(const std::string& json_text) {
  using config_json::json;
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    std::string what;
    for (unsigned char ch : std::string(e.what())) what += (ch >= 0x20 && ch < 0x7f) ? char(ch) : '?';
    config_json::bad("config is not valid JSON (" + what + ")");
  }
  if (!j.is_object()) config_json::bad(std::string("config must be a JSON object, got ") + config_json::json_type(j));
  std::string arch = "nfd";  // files from before there was more than one architecture
  if (auto it = j.find("architecture"); it != j.end()) {
    if (!it->is_string())
      config_json::bad(std::string("field 'architecture' must be a string, got ") + config_json::json_type(*it));
    arch = it->get<std::string>();
  }
  Config c = model::architecture(arch).parse_config(j);
  c.architecture = arch;
  return c;
}

std::string config_to_json(const Config& cfg) { return model::architecture(cfg.architecture).config_to_json(cfg); }

}  // namespace nfd
