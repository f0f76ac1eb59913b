// CUDA halves of the generic device functions of backends/device.h. backends/cpu/device_cpu.cc handles the CPU
// and forwards anything touching CUDA memory here; backends/cuda/ implements these when NFD_RT_WITH_CUDA is on.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor.h"

namespace nfd {
#ifdef NFD_RT_WITH_CUDA
void* cuda_malloc(size_t bytes);
void cuda_free(void* ptr);
// Either side may be host or device memory; synchronous with respect to `stream` (a cudaStream_t).
void cuda_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, void* stream);
void cuda_synchronize(void* stream);
size_t cuda_free_memory(std::string* source);  // cudaMemGetInfo's free bytes
#endif
}  // namespace nfd
