// The cuDNN library behind the CUDA backend's cuDNN engines (attention: ops/attention_cuda_cudnn.cc; convolution:
// ops/conv2d_cuda_cudnn.cc), shared by both: libcudnn.so.9 opened at first use, never linked (ops/vendor_library.h's
// search order, variable NFD_RT_CUDNN_LIB), cudnn-frontend's calls pointed at it, and one handle for the process.
// Built with the cuDNN engines (NFD_RT_WITH_CUDNN); host C++ only.
#pragma once

#include <cuda_runtime_api.h>

#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "core/error.h"

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

// Runs a built cudnn-frontend graph on stream s with the process' handle (graph-capturable: no allocation, no
// synchronisation). Throws nfd::Error (internal) naming `who` when there is no handle or cuDNN reports a failure.
// A template so this header needs no frontend include (kernel_report.cc includes it without cuDNN's headers).
template <typename Graph, typename Pack>
void execute(Graph& graph, Pack& pack, void* workspace, cudaStream_t s, const char* who) {
  const Handle h = acquire(nullptr);
  NFD_CHECK(h.handle, internal, std::string(who) + ": no cuDNN handle");
  set_stream(h, s, who);
  auto e = graph.execute(h.handle, pack, workspace);  // not const: the frontend's get_message() is not
  NFD_CHECK(e.is_good(), internal, std::string(who) + ": execute failed: " + e.get_message());
}

// The built graphs of one engine, kept for the process by problem key. Plan has `graph` (null where cuDNN took no
// plan) and `error`. find_or_build looks the key up, or builds it once with build(handle), the handle held
// meanwhile, and keeps the result, a failed build too (a problem is tried once); it returns the plan, or null with
// *why. Never throws: a frontend exception (a missing symbol) becomes the plan's error.
template <typename Key, typename Plan>
class PlanCache {
 public:
  template <typename Build>
  const Plan* find_or_build(const Key& key, Build build, std::string* why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = plans_.find(key);
      if (it != plans_.end()) return kept(it->second, why);
    }
    Plan b;
    try {
      std::string no_handle;
      const Handle h = acquire(&no_handle);
      if (h.handle) b = build(h.handle);
      else b.error = no_handle;
    } catch (const std::exception& e) {
      b = Plan{};
      b.error = e.what();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return kept(plans_.emplace(key, std::move(b)).first->second, why);  // a concurrent first build of key wins
  }
  // Whether a usable plan of key was built (a build that failed is kept too, so it is not retried: not usable).
  bool built(const Key& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(key);
    return it != plans_.end() && it->second.graph;
  }

 private:
  static const Plan* kept(const Plan& plan, std::string* why) {
    if (why) *why = plan.error;
    return plan.graph ? &plan : nullptr;
  }
  mutable std::mutex mu_;
  std::map<Key, Plan> plans_;  // a std::map's elements stay where they are: the pointers handed out live on
};

}  // namespace cudnn
}  // namespace ops
}  // namespace nfd
