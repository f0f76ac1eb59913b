// Run-time switches: NFD_RT_* environment variables that turn one code path on or off, so a path that has never
// run on a GPU is one variable away from the path that was measured (docs/cuda-backend.md lists them). Read at
// the call (cheap: a getenv), so a test or a GPU run can flip one between sessions.
#pragma once

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

#include "core/error.h"

namespace nfd {

// The value of switch `name`, one of `choices` (the first is the default, taken when the variable is unset or
// empty). Any other value is an invalid_argument naming the variable and its choices: a typo must not silently
// run the default path.
inline std::string switch_value(const char* name, std::initializer_list<const char*> choices) {
  const char* e = std::getenv(name);
  if (!e || !*e) return *choices.begin();
  std::string allowed;
  for (const char* c : choices) {
    if (std::strcmp(e, c) == 0) return c;
    allowed += (allowed.empty() ? "'" : ", '") + std::string(c) + "'";
  }
  fail(ErrorKind::invalid_argument, std::string(name) + " must be one of " + allowed + ", got '" + e + "'");
}

// An on/off switch, on unless set to "off" (or "0").
inline bool switch_on(const char* name) {
  const std::string v = switch_value(name, {"on", "off", "1", "0"});
  return v == "on" || v == "1";
}

}  // namespace nfd
