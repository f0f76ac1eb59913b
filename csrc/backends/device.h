// Device memory, streams and CUDA graphs behind one small interface, so core/session.cc is device-agnostic.
// backends/cpu/device_cpu.cc implements the CPU side and the CUDA entry points when built without CUDA
// (they throw ErrorKind::unsupported "built without CUDA"); backends/cuda/device_cuda.cc the CUDA side.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace nfd {

// Fixed-size allocations made at session open (plan), freed together with the arena.
class Arena {
 public:
  explicit Arena(Device device) : device_(device) {}
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Tensor alloc(std::vector<int64_t> shape, DType dtype);  // zero-filled
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Device device_;
  size_t bytes_ = 0;
  std::vector<void*> blocks_;
};

void* device_malloc(Device device, size_t bytes);
void device_free(Device device, void* ptr);
// Copies bytes between host and device memory (either side may be either device); synchronous on `stream`.
void device_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, void* stream);
void device_synchronize(Device device, void* stream);

bool cuda_available();              // built with CUDA, a driver is loaded and a device exists
std::string cuda_device_name();     // "" when unavailable
void* cuda_stream_create();
void cuda_stream_destroy(void* stream);

// Captures the work `fn` enqueues on `stream` once, then replays it (cudaGraphLaunch).
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  void capture(void* stream, const std::function<void()>& fn);
  void replay(void* stream);
  bool captured() const { return exec_ != nullptr; }

 private:
  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

}  // namespace nfd
