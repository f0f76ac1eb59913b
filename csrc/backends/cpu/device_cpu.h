// The CPU side of backends/device.h (host memory, what the host has available) and the process-wide BLAS setup.
// backends/device.cc routes Device::cpu here.
#pragma once

#include <cstddef>
#include <string>

namespace nfd {
namespace cpu {

void* host_malloc(size_t bytes);  // 64-byte aligned; failure -> ErrorKind::out_of_memory
void host_free(void* ptr);
// The smallest of MemAvailable (/proc/meminfo), the cgroup's limit minus its usage and RLIMIT_AS minus VmSize.
size_t host_available_memory(std::string* source);

// Sets OpenBLAS' thread count (only when it changes; it is process-wide).
void set_blas_threads(int threads);
// OpenBLAS' build and the kernel set it chose for this CPU, e.g. "OpenBLAS 0.3.34 DYNAMIC_ARCH ... SkylakeX".
std::string blas_config();

}  // namespace cpu
}  // namespace nfd
