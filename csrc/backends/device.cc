// The device-generic half of backends/device.h: arenas, and memory calls routed to the CPU side
// (backends/cpu/device_cpu.h) or the CUDA side (backends/cuda/device_cuda.h, only when built with CUDA; without
// it every CUDA entry point reports "built without CUDA").
#include "backends/device.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cpu/device_cpu.h"
#include "core/error.h"
#ifdef NFD_RT_WITH_CUDA
#include "backends/cuda/device_cuda.h"
#endif

namespace nfd {

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
#ifdef NFD_RT_WITH_CUDA
    cuda_device::zero(t.data, bytes);  // on the device: a KV cache of gigabytes needs no host copy of its zeros
#endif
  }
  return t;
}

#ifndef NFD_RT_WITH_CUDA
[[noreturn]] static void no_cuda(const char* what) {
  fail(ErrorKind::unsupported, std::string(what) + ": nfd_rt was built without CUDA");
}
#endif

void* device_malloc(Device device, size_t bytes) {
  if (device == Device::cpu) return cpu::host_malloc(bytes);
#ifdef NFD_RT_WITH_CUDA
  return cuda_device::malloc(bytes);
#else
  no_cuda("device_malloc");
#endif
}

void device_free(Device device, void* ptr) {
  if (!ptr) return;
  if (device == Device::cpu) return cpu::host_free(ptr);
#ifdef NFD_RT_WITH_CUDA
  cuda_device::free(ptr);
#else
  no_cuda("device_free");
#endif
}

void device_memcpy_async(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                         void* stream) {
  if (bytes == 0) return;
  if (dst_device == Device::cpu && src_device == Device::cpu) {
    std::memmove(dst, src, bytes);
    return;
  }
#ifdef NFD_RT_WITH_CUDA
  cuda_device::memcpy_async(dst, dst_device == Device::cuda, src, src_device == Device::cuda, bytes, stream);
#else
  no_cuda("device_memcpy_async");
#endif
}

void device_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, void* stream) {
  device_memcpy_async(dst, dst_device, src, src_device, bytes, stream);
  if (bytes && (dst_device == Device::cuda || src_device == Device::cuda)) device_synchronize(Device::cuda, stream);
}

void* pinned_host_alloc(size_t bytes) {
#ifdef NFD_RT_WITH_CUDA
  return cuda_device::pinned_alloc(bytes);
#else
  no_cuda("pinned_host_alloc");
#endif
}

void pinned_host_free(void* ptr) {
#ifdef NFD_RT_WITH_CUDA
  cuda_device::pinned_free(ptr);
#else
  (void)ptr;
#endif
}

void device_synchronize(Device device, void* stream) {
  if (device == Device::cpu) return;  // CPU work is synchronous
#ifdef NFD_RT_WITH_CUDA
  cuda_device::synchronize(stream);
#else
  no_cuda("device_synchronize");
#endif
}

void device_synchronize_quietly(Device device, void* stream) noexcept {
  try {
    device_synchronize(device, stream);
  } catch (...) {
  }
}

size_t available_memory(Device device, std::string* source) {
  if (device == Device::cpu) return cpu::host_available_memory(source);
#ifdef NFD_RT_WITH_CUDA
  return cuda_device::free_memory(source);
#else
  no_cuda("available_memory");
#endif
}

DeviceScope::DeviceScope(Device device) {
#ifdef NFD_RT_WITH_CUDA
  if (device == Device::cuda) previous_ = cuda_device::make_process_device_current();
#else
  (void)device;
#endif
}

DeviceScope::~DeviceScope() {
#ifdef NFD_RT_WITH_CUDA
  cuda_device::restore_device(previous_);
#endif
}

#ifndef NFD_RT_WITH_CUDA
bool cuda_available() { return false; }
bool built_with_cuda() { return false; }
std::string cuda_unavailable_reason() { return "built without CUDA"; }
std::string cuda_device_name() { return ""; }
void* cuda_stream_create() { no_cuda("cuda_stream_create"); }
void cuda_stream_destroy(void* stream) {}
void cuda_stream_wait_for(void* waiting, void* other) { no_cuda("cuda_stream_wait_for"); }
CudaGraph::~CudaGraph() {}
void CudaGraph::capture(void* stream, const std::function<void()>& fn) { no_cuda("CudaGraph::capture"); }
void CudaGraph::replay(void* stream) { no_cuda("CudaGraph::replay"); }
#endif

}  // namespace nfd
