// The generic parts of config <-> JSON; each architecture's fields are parsed by its plug-in
// (model/architecture.cc dispatches on the "architecture" field).
#include <charconv>
#include <cstdlib>

#include "core/config_json.h"

namespace nfd {
namespace config_json {

double shortest(float x) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), x);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

}  // namespace config_json
}  // namespace nfd
