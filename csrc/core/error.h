// One exception type inside the runtime; the C ABI and the Python binding turn it into a status / exception.
#pragma once

#include <stdexcept>
#include <string>

namespace nfd {

// out_of_memory: an allocation failed, or the memory a session would need (estimated before allocating anything)
// is more than the device has available or than the caller allowed (SessionOptions::max_memory_bytes).
enum class ErrorKind { invalid_argument, invalid_file, io, unsupported, out_of_memory, internal };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& msg) { throw Error(kind, msg); }

}  // namespace nfd

#define NFD_CHECK(cond, kind, msg)                 \
  do {                                             \
    if (!(cond)) ::nfd::fail(::nfd::ErrorKind::kind, (msg)); \
  } while (0)
