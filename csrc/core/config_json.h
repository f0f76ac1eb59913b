// The config JSON field reader every architecture's parser uses: each field checked by name, type and range,
// unknown fields rejected (a newer exporter's file should fail loudly, not run wrong).
#pragma once

#include <cmath>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/error.h"

namespace nfd {
namespace config_json {

using json = nlohmann::json;

[[noreturn]] inline void bad(const std::string& msg) { fail(ErrorKind::invalid_file, msg); }

inline const char* json_type(const json& v) {
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

  bool boolean(const std::string& key) {
    const json& v = at(key);
    if (!v.is_boolean()) bad("field '" + prefix_ + key + "' must be true or false, got " + json_type(v));
    return v.get<bool>();
  }

  std::vector<bool> bool_list(const std::string& key, size_t len) {
    const json& v = at(key);
    if (!v.is_array()) bad("field '" + prefix_ + key + "' must be a list of booleans, got " + json_type(v));
    if (v.size() != len)
      bad("field '" + prefix_ + key + "' must have " + std::to_string(len) + " entries, got " +
          std::to_string(v.size()));
    std::vector<bool> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_boolean())
        bad("field '" + prefix_ + key + "[" + std::to_string(i) + "]' must be true or false, got " + json_type(v[i]));
      out.push_back(v[i].get<bool>());
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

inline std::string list_str(const std::vector<int>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

// Shortest decimal form of a float, as a double with that exact decimal value (1e-6f -> 1e-06).
double shortest(float x);

}  // namespace config_json

}  // namespace nfd
