// CUDA memory entry points behind the generic nfd::device_malloc / device_free / device_memcpy /
// device_synchronize (backends/cpu/device_cpu.cc calls these for Device::cuda when built with CUDA).
// Every CUDA error becomes nfd::Error (ErrorKind::internal) with cudaGetErrorString's text.
#pragma once

#include <cstddef>

namespace nfd {
namespace cuda_backend {

void* malloc(size_t bytes);  // cudaMalloc; 0 bytes -> nullptr
void free(void* ptr);        // cudaFree; nullptr is a no-op; never throws (used from destructors)
// Copies n bytes; either side may be host or device memory. Synchronous: returns once `stream` has finished it.
void memcpy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t n, void* stream);
void synchronize(void* stream);  // cudaStreamSynchronize (nullptr = the legacy default stream)

}  // namespace cuda_backend
}  // namespace nfd
