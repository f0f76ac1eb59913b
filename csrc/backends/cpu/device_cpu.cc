// CPU side of backends/device.h: aligned host memory, the memory the host has available, OpenBLAS' threads.
#include "backends/cpu/device_cpu.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "backends/cpu/blas.h"
#include "core/error.h"

namespace nfd {
namespace cpu {

void set_blas_threads(int threads) {
  static std::atomic<int> current{-1};  // OpenBLAS' thread count is process-wide
  threads = std::max(threads, 1);
  if (current.exchange(threads) != threads) NFD_OPENBLAS(set_num_threads)(threads);
}

std::string blas_config() { return std::string(NFD_OPENBLAS(get_config)()); }

void* host_malloc(size_t bytes) {
  // Large blocks (the KV cache above all) on 2 MiB boundaries with transparent huge pages requested: the
  // token-major cache is read in rows of one head spread over the whole block, one 4 KiB page per key on
  // nfd-130m shapes, and TLB misses made attention ~7% slower there than with huge pages.
  constexpr size_t kHuge = size_t(2) << 20;
  const bool huge = bytes >= 2 * kHuge;
  const size_t align = huge ? kHuge : 64;  // 64-byte alignment for SIMD loads
  const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) fail(ErrorKind::out_of_memory, "out of host memory allocating " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
  if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP this is a no-op
#endif
  return p;
}

void host_free(void* ptr) { std::free(ptr); }

// A number from the first line of `path` ("max" or unreadable: SIZE_MAX).
static size_t read_bytes_file(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return SIZE_MAX;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  return end && *end == 0 ? size_t(v) : SIZE_MAX;
}

size_t host_available_memory(std::string* source) {
  size_t best = SIZE_MAX;
  std::string from = "unknown";
  // MemAvailable, else MemFree (kernels before 3.14). A zero is taken as "not reported", not as "nothing
  // free": a running process always has some, and a virtual machine whose memory grows on demand (balloon,
  // hot-plug) has been seen to report 0 while gigabytes were there; allocation failures still map to
  // out_of_memory when the estimate could not be checked.
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  unsigned long long available_kb = 0, free_kb = 0;
  while (std::getline(meminfo, line)) {
    char key[64] = {};
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "%63s %llu", key, &kb) != 2) continue;
    if (std::strcmp(key, "MemAvailable:") == 0) available_kb = kb;
    if (std::strcmp(key, "MemFree:") == 0) free_kb = kb;
  }
  if (available_kb > 0) {
    best = size_t(available_kb) * 1024;
    from = "MemAvailable in /proc/meminfo";
  } else if (free_kb > 0) {
    best = size_t(free_kb) * 1024;
    from = "MemFree in /proc/meminfo (no MemAvailable)";
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

}  // namespace cpu
}  // namespace nfd
