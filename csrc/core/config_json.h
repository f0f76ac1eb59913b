// Config <-> JSON helpers beyond config.h: the JSON the runtime reports back (Python builds an NFDConfig from it).
#pragma once

#include <string>

#include "core/config.h"

namespace nfd {

// JSON text of `cfg` with the field names of python/nfd_rt/configs.py (floats written in their shortest
// round-trip form, so 1e-6f comes back as 1e-06, not 9.99999997e-07).
std::string config_to_json(const Config& cfg);

}  // namespace nfd
