// Which implementation an op ran, for benchmarks and users (`nfd_rt._core.kernels_used()`): ops that choose
// between kernels (CUDA attention: ours / FlashInfer / CUDA cores; CUDA linear: CUTLASS / cuBLASLt) record
// their choice under a key naming the op and its shape. Header-only (one registry per binary) so the
// standalone CUDA op harness, which links only the CUDA objects, has it too.
#pragma once

#include <map>
#include <mutex>
#include <string>

namespace nfd {

namespace detail {
inline std::mutex& kernel_report_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<std::string, std::string>& kernel_report_map() {
  static std::map<std::string, std::string> m;
  return m;
}
}  // namespace detail

// Records that `op_key` (e.g. "attention bf16 hd64") last ran `impl`.
inline void note_kernel(const std::string& op_key, const std::string& impl) {
  std::lock_guard<std::mutex> lock(detail::kernel_report_mutex());
  detail::kernel_report_map()[op_key] = impl;
}

// Everything recorded so far in this process (op key -> implementation of its last call).
inline std::map<std::string, std::string> kernels_used() {
  std::lock_guard<std::mutex> lock(detail::kernel_report_mutex());
  return detail::kernel_report_map();
}

inline void clear_kernels_used() {
  std::lock_guard<std::mutex> lock(detail::kernel_report_mutex());
  detail::kernel_report_map().clear();
}

}  // namespace nfd
