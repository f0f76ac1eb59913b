#include "ops/kernel_report.h"

#include <mutex>

#ifdef NFD_RT_WITH_CUBLASLT
#include "ops/cuda_gemm.h"
#endif

namespace nfd {

namespace {
std::mutex g_mutex;
std::map<std::string, std::string>& registry() {
  static std::map<std::string, std::string> m;
  return m;
}
}  // namespace

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
#ifdef NFD_RT_WITH_CUBLASLT
  b.cublaslt = true;
  b.cublaslt_status = ops::cuda_detail::cublaslt_status();  // loads the library once; needs no GPU
#else
  b.cublaslt_status = "built without cuBLASLt (cublasLt.h not found at build time)";
#endif
  return b;
}

}  // namespace nfd
