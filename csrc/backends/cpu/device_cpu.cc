// CPU side of backends/device.h: plain aligned host memory. Without CUDA, the CUDA entry points are stubs that
// report "built without CUDA" (backends/cuda/ implements them when NFD_RT_WITH_CUDA is defined).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include <sys/mman.h>

#include <cblas.h>

#include "backends/cpu/parallel.h"
#include "backends/device.h"
#include "backends/device_impl.h"
#include "core/error.h"

namespace nfd {

namespace cpu {
void set_blas_threads(int threads) {
  static std::atomic<int> current{-1};  // OpenBLAS' thread count is process-wide
  threads = std::max(threads, 1);
  if (current.exchange(threads) != threads) scipy_openblas_set_num_threads(threads);
}
std::string blas_config() { return std::string(scipy_openblas_get_config()); }
}  // namespace cpu

Arena::~Arena() {
  for (void* p : blocks_) {
    try {
      device_free(device_, p);
    } catch (...) {  // destructors never throw
    }
  }
}

Tensor Arena::alloc(std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.device = device_;
  t.shape = std::move(shape);
  for (int64_t s : t.shape) NFD_CHECK(s >= 0, invalid_argument, "Arena::alloc: negative dimension in " + t.describe());
  size_t bytes = std::max<size_t>(t.bytes(), 1);
  t.data = device_malloc(device_, bytes);
  blocks_.push_back(t.data);
  bytes_ += bytes;
  if (device_ == Device::cpu) {
    std::memset(t.data, 0, bytes);
  } else {
    std::vector<uint8_t> zeros(bytes, 0);  // arenas are filled once at open: a host staging buffer is fine
    device_memcpy(t.data, device_, zeros.data(), Device::cpu, bytes, nullptr);
  }
  return t;
}

#ifndef NFD_RT_WITH_CUDA
[[noreturn]] static void no_cuda(const char* what) {
  fail(ErrorKind::unsupported, std::string(what) + ": nfd_rt was built without CUDA");
}
#endif

void* device_malloc(Device device, size_t bytes) {
  if (device == Device::cpu) {
    // Large blocks (the KV cache above all) on 2 MiB boundaries with transparent huge pages requested: the
    // token-major cache is read in rows of one head spread over the whole block, one 4 KiB page per key on
    // nfd-130m shapes, and TLB misses made attention ~7% slower there than with huge pages.
    constexpr size_t kHuge = size_t(2) << 20;
    const bool huge = bytes >= 2 * kHuge;
    const size_t align = huge ? kHuge : 64;  // 64-byte alignment for SIMD loads
    size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (!p) fail(ErrorKind::internal, "out of host memory allocating " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP this is a no-op
#endif
    return p;
  }
#ifdef NFD_RT_WITH_CUDA
  return cuda_malloc(bytes);
#else
  no_cuda("device_malloc");
#endif
}

void device_free(Device device, void* ptr) {
  if (!ptr) return;
  if (device == Device::cpu) {
    std::free(ptr);
    return;
  }
#ifdef NFD_RT_WITH_CUDA
  cuda_free(ptr);
#else
  no_cuda("device_free");
#endif
}

void device_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, void* stream) {
  if (bytes == 0) return;
  if (dst_device == Device::cpu && src_device == Device::cpu) {
    std::memmove(dst, src, bytes);
    return;
  }
#ifdef NFD_RT_WITH_CUDA
  cuda_memcpy(dst, dst_device, src, src_device, bytes, stream);
#else
  no_cuda("device_memcpy");
#endif
}

void device_synchronize(Device device, void* stream) {
  if (device == Device::cpu) return;  // CPU work is synchronous
#ifdef NFD_RT_WITH_CUDA
  cuda_synchronize(stream);
#else
  no_cuda("device_synchronize");
#endif
}

#ifndef NFD_RT_WITH_CUDA
bool cuda_available() { return false; }
std::string cuda_device_name() { return ""; }
void* cuda_stream_create() { no_cuda("cuda_stream_create"); }
void cuda_stream_destroy(void* stream) {}
CudaGraph::~CudaGraph() {}
void CudaGraph::capture(void* stream, const std::function<void()>& fn) { no_cuda("CudaGraph::capture"); }
void CudaGraph::replay(void* stream) { no_cuda("CudaGraph::replay"); }
#endif

}  // namespace nfd
