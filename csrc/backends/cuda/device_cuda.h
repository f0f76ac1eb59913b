// CUDA side of backends/device.h (only when built with CUDA): backends/device.cc routes Device::cuda memory calls
// here. Every CUDA error becomes nfd::Error with cudaGetErrorString's text; out of memory is
// ErrorKind::out_of_memory.
#pragma once

#include <cstddef>
#include <string>

namespace nfd {
namespace cuda_device {

void* malloc(size_t bytes);  // cudaMalloc; 0 bytes -> nullptr
void free(void* ptr);        // cudaFree; nullptr is a no-op; never throws (used from destructors)
// Copies n bytes, ordered on `stream` without waiting (cudaMemcpyAsync); either side may be host or device
// memory. (device_memcpy adds the wait.)
void memcpy_async(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t n, void* stream);
void* pinned_alloc(size_t bytes);  // cudaMallocHost; 0 bytes -> nullptr
void pinned_free(void* ptr);       // cudaFreeHost; never throws
void synchronize(void* stream);  // cudaStreamSynchronize (nullptr = the legacy default stream)
void zero(void* ptr, size_t n);  // cudaMemset, then waits for it (ordered before work on any stream after)
size_t free_memory(std::string* source);  // cudaMemGetInfo's free bytes
// Makes the process' device (backends/device.h, DeviceScope) current on this thread; returns the device that was
// current when it was another (and in use on this thread: a thread that never used CUDA gets nothing back, which
// would create a context on its device 0), else -1. Never throws (it runs in destructors and at a worker thread's start): where
// CUDA cannot say or set the device (no device), the calls that follow report the error. restore_device(previous)
// gives it back.
int make_process_device_current();
void restore_device(int previous);

}  // namespace cuda_device
}  // namespace nfd
