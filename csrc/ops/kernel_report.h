// Which implementation an op ran, for benchmarks and users (`nfd_rt._core.kernels_used()`): ops that choose
// between kernels (CUDA attention: ours / FlashInfer / CUDA cores; CUDA linear: CUTLASS / cuBLASLt) record
// their choice under a key naming the op and its shape. One registry per process (ops/kernel_report.cc, in
// libnfd_rt), thread-safe.
#pragma once

#include <map>
#include <string>

namespace nfd {

// Records that `op_key` (e.g. "attention bf16 hd64") last ran `impl`.
void note_kernel(const std::string& op_key, const std::string& impl);

// Everything recorded so far in this process (op key -> implementation of its last call).
std::map<std::string, std::string> kernels_used();

void clear_kernels_used();

// What the CUDA backend was compiled with (the vendor peers), and where cuBLASLt was loaded from or why not.
struct CudaBuildInfo {
  bool cuda = false, flashinfer = false, cublaslt = false;
  std::string cublaslt_status;
};
CudaBuildInfo cuda_build_info();

}  // namespace nfd
