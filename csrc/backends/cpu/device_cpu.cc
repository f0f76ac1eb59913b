// CPU side of backends/device.h: plain aligned host memory. Without CUDA, the CUDA entry points are stubs that
// report "built without CUDA" (backends/cuda/ implements them when NFD_RT_WITH_CUDA is defined).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

#include <cblas.h>
#include <sys/mman.h>
#include <sys/resource.h>

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

Arena::Arena(Arena&& other) noexcept
    : device_(other.device_), measuring_(other.measuring_), blocks_(std::move(other.blocks_)) {
  std::copy(other.bytes_, other.bytes_ + 3, bytes_);
  other.blocks_.clear();
}

Tensor Arena::alloc(std::vector<int64_t> shape, DType dtype, Use use) {
  Tensor t;
  t.dtype = dtype;
  t.device = device_;
  t.shape = std::move(shape);
  for (int64_t s : t.shape) NFD_CHECK(s >= 0, invalid_argument, "Arena::alloc: negative dimension in " + t.describe());
  size_t bytes = std::max<size_t>(t.bytes(), 1);
  bytes_[int(use)] += bytes;
  if (measuring_) return t;  // no data: the tensor only carries its shape
  t.data = device_malloc(device_, bytes);
  blocks_.push_back(t.data);
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
    if (!p) fail(ErrorKind::out_of_memory, "out of host memory allocating " + std::to_string(bytes) + " bytes");
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

// A number from the first line of `path` ("max" or unreadable: SIZE_MAX).
static size_t read_bytes_file(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return SIZE_MAX;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  return end && *end == 0 ? size_t(v) : SIZE_MAX;
}

static size_t host_available_memory(std::string* source) {
  size_t best = SIZE_MAX;
  std::string from = "unknown";
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  unsigned long long kb = 0;
  std::string unit;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      best = size_t(kb) * 1024;
      from = "MemAvailable in /proc/meminfo";
      break;
    }
  }
  // A container's memory limit (cgroup v2, then v1) may be lower than what the host has free.
  const std::pair<const char*, const char*> cgroups[] = {
      {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
      {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& cg : cgroups) {
    const size_t limit = read_bytes_file(cg.first), used = read_bytes_file(cg.second);
    if (limit == SIZE_MAX || used == SIZE_MAX) continue;
    const size_t left = limit > used ? limit - used : 0;
    if (left < best) {
      best = left;
      from = std::string("the cgroup limit ") + cg.first + " minus its usage";
    }
    break;
  }
  // A process address-space limit (ulimit -v) caps what this process can map, whatever the machine has free.
  struct rlimit as_limit;
  if (getrlimit(RLIMIT_AS, &as_limit) == 0 && as_limit.rlim_cur != RLIM_INFINITY) {
    std::ifstream status("/proc/self/status");
    std::string line;
    size_t vm_kb = 0;
    while (std::getline(status, line))
      if (line.rfind("VmSize:", 0) == 0) vm_kb = size_t(std::strtoull(line.c_str() + 7, nullptr, 10));
    const size_t limit = size_t(as_limit.rlim_cur), used = vm_kb * 1024;
    const size_t left = limit > used ? limit - used : 0;
    if (left < best) {
      best = left;
      from = "the address-space limit RLIMIT_AS (ulimit -v) minus this process' VmSize";
    }
  }
  if (source) *source = from;
  return best;
}

size_t available_memory(Device device, std::string* source) {
  if (device == Device::cpu) return host_available_memory(source);
#ifdef NFD_RT_WITH_CUDA
  return cuda_free_memory(source);
#else
  no_cuda("available_memory");
#endif
}

#ifndef NFD_RT_WITH_CUDA
bool cuda_available() { return false; }
bool built_with_cuda() { return false; }
std::string cuda_unavailable_reason() { return "built without CUDA"; }
std::string cuda_device_name() { return ""; }
void* cuda_stream_create() { no_cuda("cuda_stream_create"); }
void cuda_stream_destroy(void* stream) {}
CudaGraph::~CudaGraph() {}
void CudaGraph::capture(void* stream, const std::function<void()>& fn) { no_cuda("CudaGraph::capture"); }
void CudaGraph::replay(void* stream) { no_cuda("CudaGraph::replay"); }
#endif

}  // namespace nfd
