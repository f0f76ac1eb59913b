#include "ops/kernel_report.h"

#include <atomic>
#include <mutex>
#include <utility>

#ifdef NFD_RT_WITH_CUBLASLT
#include "ops/cuda_gemm.h"
#endif
#ifdef NFD_RT_WITH_CUDNN
#include "ops/cudnn_library.h"
#endif

namespace nfd {

namespace {
std::mutex g_mutex;
std::map<std::string, std::string>& registry() {
  static std::map<std::string, std::string> m;
  return m;
}
}  // namespace

std::atomic<bool> g_trace_on{false};
std::map<std::pair<std::string, std::vector<int64_t>>, int64_t>& trace() {
  static std::map<std::pair<std::string, std::vector<int64_t>>, int64_t> m;
  return m;
}

void op_trace_begin() {
  std::lock_guard<std::mutex> lock(g_mutex);
  trace().clear();
  g_trace_on = true;
}

std::vector<OpCall> op_trace_end() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_trace_on = false;
  std::vector<OpCall> out;
  for (const auto& [key, n] : trace()) out.push_back({key.first, key.second, n});
  trace().clear();
  return out;
}

bool op_trace_on() { return g_trace_on.load(std::memory_order_relaxed); }

void op_trace_record(const char* op, const std::vector<int64_t>& out_shape) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_trace_on) ++trace()[{op, out_shape}];
}

void note_kernel(const std::string& op_key, const std::string& impl) {
  std::lock_guard<std::mutex> lock(g_mutex);
  registry()[op_key] = impl;
}

std::map<std::string, std::string> kernels_used() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return registry();
}

void clear_kernels_used() {
  std::lock_guard<std::mutex> lock(g_mutex);
  registry().clear();
}

CudaBuildInfo cuda_build_info() {
  CudaBuildInfo b;
#ifdef NFD_RT_WITH_CUDA
  b.cuda = true;
#endif
#ifdef NFD_RT_WITH_FLASHINFER
  b.flashinfer = true;
#endif
#ifdef NFD_RT_WITH_FLASHINFER_SM90
  b.flashinfer_sm90 = true;
#endif
#ifdef NFD_RT_WITH_CUBLASLT
  b.cublaslt = true;
  b.cublaslt_status = ops::cuda_detail::cublaslt_status();  // loads the library once; needs no GPU
#else
  b.cublaslt_status = "built without cuBLASLt (cublasLt.h not found at build time)";
#endif
#ifdef NFD_RT_WITH_CUDNN
  b.cudnn = true;
  b.cudnn_status = ops::cudnn::status();  // loads the library once (no handle: that needs a GPU)
#else
  b.cudnn_status = "built without cuDNN (cudnn-frontend headers not found at build time)";
#endif
  return b;
}

}  // namespace nfd
