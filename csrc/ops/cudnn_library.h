// The cuDNN library behind the CUDA backend's cuDNN engines (attention: ops/attention_cuda_cudnn.cc; convolution:
// ops/conv2d_cuda_cudnn.cc), shared by both: libcudnn.so.9 opened at first use, never linked (ops/vendor_library.h's
// search order, variable NFD_RT_CUDNN_LIB), cudnn-frontend's calls pointed at it, and one handle for the process.
// Built with the cuDNN engines (NFD_RT_WITH_CUDNN); host C++ only.
#pragma once

#include <cuda_runtime_api.h>

#include <mutex>
#include <string>

// cudnn.h's handle type, declared as it does (this header is included where cudnn.h is not on the include path).
struct cudnnContext;
typedef struct cudnnContext* cudnnHandle_t;

namespace nfd {
namespace ops {
namespace cudnn {

// Whether libcudnn.so.9 (cuDNN 9 or newer) was loaded (the first call tries), and from where or why not.
bool available();
std::string status();

// The process' handle with the lock its users hold while they build or run on it (its stream is set per call).
// The handle is made at the first acquire (cudnnCreate needs a GPU; loading the library does not) and lives until
// the process ends (destroying it at exit races the CUDA teardown). handle is null, *why said, when cuDNN is not
// loaded or cudnnCreate failed.
struct Handle {
  std::unique_lock<std::mutex> lock;
  cudnnHandle_t handle = nullptr;
};
Handle acquire(std::string* why);

// cudnnSetStream on an acquired handle; throws nfd::Error (internal) naming `who` when it fails.
void set_stream(const Handle& h, cudaStream_t s, const char* who);

}  // namespace cudnn
}  // namespace ops
}  // namespace nfd
