// Which implementation an op ran, for benchmarks and users (`nfd_rt._core.kernels_used()`): ops that choose
// between kernels (CUDA attention: ours / FlashInfer / CUDA cores; CUDA linear: CUTLASS / cuBLASLt) record
// their choice under a key naming the op and its shape. One registry per process (ops/kernel_report.cc, in
// libnfd_rt), thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace nfd {

// Records that `op_key` (e.g. "attention bf16 hd64") last ran `impl`.
void note_kernel(const std::string& op_key, const std::string& impl);

// Everything recorded so far in this process (op key -> implementation of its last call).
std::map<std::string, std::string> kernels_used();

void clear_kernels_used();

// The op calls of a stretch of work, for benchmarks/ops.py (which times each op of a frame and checks its list of
// a frame's calls against this one): op_trace_begin(), then every op that passes its contract is counted by name
// and output shape (NFD_DISPATCH, ops/ops_impl.h) until op_trace_end() returns the counts. Process-wide; off by
// default (then one relaxed atomic load per op call).
struct OpCall {
  std::string op;
  std::vector<int64_t> out_shape;
  int64_t count = 0;
};
void op_trace_begin();
std::vector<OpCall> op_trace_end();
bool op_trace_on();
void op_trace_record(const char* op, const std::vector<int64_t>& out_shape);

// What the CUDA backend was compiled with (the vendor peers), and where cuBLASLt and cuDNN were loaded from or why
// not (loading needs no GPU).
struct CudaBuildInfo {
  bool cuda = false, flashinfer = false, flashinfer_sm90 = false, cublaslt = false, cudnn = false;
  std::string cublaslt_status, cudnn_status;
};
CudaBuildInfo cuda_build_info();

}  // namespace nfd
