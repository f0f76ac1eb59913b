// CUDA side of backends/device.h: device queries, streams, CUDA graphs, and the memory entry points of
// backends/cuda/device_cuda.h. Nothing here aborts: every CUDA error is turned into nfd::Error with the CUDA error text.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdint>
#include <string>

#include "backends/cuda/device_cuda.h"
#include "backends/device.h"
#include "core/error.h"

namespace nfd {
namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    fail(e == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
         std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
  }
}

bool driver_installed() {
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (h) dlclose(h);
  return h != nullptr;
}
}  // namespace

bool cuda_available() { return cuda_unavailable_reason().empty(); }

namespace cuda_device {
namespace {
// Whether this thread has a current CUDA context (the driver's cuCtxGetCurrent, from the libcuda the runtime has
// loaded): a thread that never used CUDA has none, and giving it "its" device 0 back would create a context there
// (cudaSetDevice initialises the device since CUDA 12). Unknown: true, the caller's device is given back.
bool thread_has_context() {
  using GetCurrent = int (*)(void**);
  static const GetCurrent get = [] {
    void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    return h ? reinterpret_cast<GetCurrent>(dlsym(h, "cuCtxGetCurrent")) : nullptr;
  }();
  void* ctx = nullptr;
  return !get || get(&ctx) != 0 || ctx != nullptr;
}

int process_device() {  // the device current on the thread of the first DeviceScope
  static const int device = [] {
    int d = 0;
    if (cudaGetDevice(&d) != cudaSuccess) cudaGetLastError(), d = 0;
    return d;
  }();
  return device;
}
}  // namespace

void zero(void* ptr, size_t n) {
  if (n == 0) return;
  check(cudaMemset(ptr, 0, n), "cudaMemset");
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");  // our streams do not wait for the legacy one
}

int make_process_device_current() {
  const int want = process_device();
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (current == want) return -1;
  const bool give_back = thread_has_context();
  if (cudaSetDevice(want) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return give_back ? current : -1;
}

void restore_device(int previous) {
  if (previous >= 0 && cudaSetDevice(previous) != cudaSuccess) cudaGetLastError();
}
}  // namespace cuda_device

bool built_with_cuda() { return true; }

std::string cuda_unavailable_reason() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);  // no driver / no device: an error code, not an abort
  if (e != cudaSuccess) {
    cudaGetLastError();
    // The runtime says "CUDA driver version is insufficient" also when there is no driver at all.
    if (e == cudaErrorInsufficientDriver && !driver_installed())
      return "no CUDA device: no NVIDIA driver is installed (libcuda.so.1 not found)";
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
  }
  return n > 0 ? "" : "no CUDA device";
}



std::string cuda_device_name() {
  if (!cuda_available()) return "";
  int dev = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return prop.name;
}

void* cuda_stream_create() {
  // Op scratch comes from the device's default memory pool (cudaMallocAsync, see ops/cuda_common.cuh). Its
  // release threshold defaults to 0: at every synchronisation, i.e. every frame, the pool hands its free memory
  // back to the driver, and the next frame maps it again. Keep it instead. (Suspected cause of the ~80 ms that
  // a decoding step costs on top of its parts on the H100; not yet measured on a GPU.)
  int dev = 0;
  cudaMemPool_t pool = nullptr;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetDefaultMemPool(&pool, dev), "cudaDeviceGetDefaultMemPool");
  uint64_t keep_all = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all), "cudaMemPoolSetAttribute");
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return s;
}

void cuda_stream_destroy(void* stream) {
  if (stream) cudaStreamDestroy(static_cast<cudaStream_t>(stream));  // no throw: called from destructors
}

void cuda_stream_wait_for(void* waiting, void* other) {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t r = cudaEventRecord(e, static_cast<cudaStream_t>(other));
  if (r == cudaSuccess) r = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiting), e, 0);
  cudaEventDestroy(e);  // the wait is enqueued (or captured as a dependency): the event itself is not needed
  check(r, "cudaEventRecord / cudaStreamWaitEvent");
}

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void CudaGraph::capture(void* stream, const std::function<void()>& fn) {
  NFD_CHECK(stream != nullptr, invalid_argument, "CudaGraph::capture needs a non-default stream");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = graph_ = nullptr;
  // Thread-local mode: other host threads may keep using CUDA (e.g. other sessions) during the capture.
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    fn();
  } catch (...) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(s, &g);  // leave the stream usable, drop the partial graph
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    throw;
  }
  cudaGraph_t g = nullptr;
  check(cudaStreamEndCapture(s, &g), "cudaStreamEndCapture");
  graph_ = g;
  cudaGraphExec_t exec = nullptr;
  check(cudaGraphInstantiate(&exec, g, 0), "cudaGraphInstantiate");
  exec_ = exec;
}

void CudaGraph::replay(void* stream) {
  NFD_CHECK(exec_ != nullptr, invalid_argument, "CudaGraph::replay before capture");
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream)), "cudaGraphLaunch");
}

namespace cuda_device {

void* malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(e == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
         "cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
  }
  return p;
}

void free(void* ptr) {
  if (ptr) cudaFree(ptr);
}

void memcpy_async(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t n, void* stream) {
  if (n == 0) return;
  cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                      : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  check(cudaMemcpyAsync(dst, src, n, kind, static_cast<cudaStream_t>(stream)), "cudaMemcpyAsync");
}

void* pinned_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  check(cudaMallocHost(&p, bytes), "cudaMallocHost (pinned staging)");
  return p;
}

void pinned_free(void* ptr) {
  if (ptr) cudaFreeHost(ptr);
}

void synchronize(void* stream) {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

size_t free_memory(std::string* source) {
  size_t free_bytes = 0, total = 0;
  check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  if (source) *source = "free memory of the CUDA device (cudaMemGetInfo)";
  return free_bytes;
}

}  // namespace cuda_device
}  // namespace nfd
