// Device memory, streams and CUDA graphs behind one small interface, so runtime/ and model/ are device-agnostic.
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
//
// A measuring arena (Arena::measure) allocates nothing: alloc returns tensors without data and only counts the
// bytes. The session runs its model constructors on one before allocating anything, so it knows what it will
// allocate from the same code that allocates it (runtime memory estimate, estimate_session_memory).
class Arena {
 public:
  enum class Use { weights, kv_cache, activations };
  explicit Arena(Device device) : device_(device) {}
  static Arena measure(Device device) { return Arena(device, true); }
  Arena(Arena&& other) noexcept;
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Tensor alloc(std::vector<int64_t> shape, DType dtype, Use use = Use::activations);  // zero-filled
  size_t bytes() const { return bytes_[0] + bytes_[1] + bytes_[2]; }
  size_t bytes(Use use) const { return bytes_[int(use)]; }
  bool measuring() const { return measuring_; }
  Device device() const { return device_; }

 private:
  Arena(Device device, bool measuring) : device_(device), measuring_(measuring) {}
  Device device_;
  bool measuring_ = false;
  size_t bytes_[3] = {0, 0, 0};
  std::vector<void*> blocks_;
};

void* device_malloc(Device device, size_t bytes);
void device_free(Device device, void* ptr);
// Copies bytes between host and device memory (either side may be either device); synchronous on `stream`.
void device_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, void* stream);
void device_synchronize(Device device, void* stream);
// The same where an error is already being handled (a catch block, a destructor): waits for the work queued on
// `stream` so none of it still touches buffers the caller reuses or frees; a failure to wait is dropped (the error
// being reported, or the next call, says what went wrong).
void device_synchronize_quietly(Device device, void* stream) noexcept;
// As device_memcpy, without waiting: the copy is ordered on `stream` (cuda) and done once the stream is
// synchronised; until then neither buffer may be reused. Host memory from pinned_host_alloc makes it truly
// asynchronous. Host-to-host copies are done on return.
void device_memcpy_async(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                         void* stream);
// Page-locked host memory (cudaMallocHost) for the asynchronous copies of a CUDA session's step.
void* pinned_host_alloc(size_t bytes);
void pinned_host_free(void* ptr);  // nullptr is a no-op; never throws (used from destructors)

bool cuda_available();              // built with CUDA, a driver is loaded and a device exists
std::string cuda_device_name();     // "" when unavailable
bool built_with_cuda();             // the CUDA backend was compiled in (whether or not a device is present)
// Why CUDA is unavailable, e.g. "built without CUDA", "no CUDA device (cudaGetDeviceCount: ...)"; "" when it is.
std::string cuda_unavailable_reason();

// Memory a new allocation on `device` can count on now, in bytes, and where the figure comes from (`source`):
// on the CPU the smallest of MemAvailable (/proc/meminfo), the cgroup's limit minus its usage and the process'
// address-space limit (RLIMIT_AS) minus its VmSize; on CUDA the device's free memory (cudaMemGetInfo). SIZE_MAX
// when unknown.
size_t available_memory(Device device, std::string* source = nullptr);
void* cuda_stream_create();
void cuda_stream_destroy(void* stream);
// Work enqueued on `waiting` from now on starts after the work enqueued on `other` so far (an event recorded on
// `other`, waited for on `waiting`). Inside a graph capture this forks a second stream into the graph or joins
// it back: the graph gets two branches that run side by side.
void cuda_stream_wait_for(void* waiting, void* other);

// nfd_rt runs on one GPU per process: the device current on the thread that first opens a CUDA model or session
// (CUDA_VISIBLE_DEVICES or torch.cuda.set_device before it choose which). Streams, memory and the vendor engines'
// handles belong to that device, so each Session and Model entry point that touches them makes it current on its
// thread while it runs (a speculation worker, a server's thread pool, a caller that set another device for its own
// work) and gives the caller's current device back after (not to a thread that had not used CUDA: that would
// create a context on its device 0). The op-level test bindings (_core.ops) use the caller's current device. On
// the CPU, or without CUDA, a no-op.
class DeviceScope {
 public:
  explicit DeviceScope(Device device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  [[maybe_unused]] int previous_ = -1;  // the caller's device, when it was another (CUDA builds only)
};

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
