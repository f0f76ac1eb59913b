// cuDNN's fused SDPA (flash attention) behind ops::attention on CUDA, as an engine timed against ours at session
// open (ops/attention_cuda.cu). Built when CMake finds cudnn-frontend's headers (NFD_RT_CUDNN; the code lives in
// ops/attention_cuda_cudnn.cc, host C++ only); libcudnn.so.9 is opened at run time, as cuBLASLt is, so nfd_rt
// loads and runs (on ours) where cuDNN is not installed. Unverified on a GPU until a GPU run says otherwise.
//
// One graph per problem (dtype, N, H, Hkv, hd, cache keys, splits): q, K/V and out as the views of
// ops/attention_cudnn_layout.h, cuDNN's padding mask with seq_len_q / seq_len_kv read on the device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace nfd {
namespace ops {
namespace cudnn_sdpa {

struct Problem {
  DType dtype = DType::bf16;
  int N = 0, H = 0, Hkv = 0, hd = 0;
  int64_t keys = 0;  // rows of the caches the views may read: slots * N
  int splits = 1;
};

// Whether cuDNN was loaded (the first call tries), and from where or why not.
bool available();
std::string status();

// A built graph of one problem (kept for the process).
struct Plan;

// Builds and keeps the graph of p (once per problem, thread-safe; later calls look it up) and returns it; null
// with *why when cuDNN is not loaded or takes no plan for it. Never throws.
const Plan* prepare(const Problem& p, std::string* why);

// Device pointers of one call: q_batches is S copies of q (q itself when S == 1); out is `out` for S == 1, else the
// partials [S, H, N, hd]; stats [S, H, N] fp32 (S > 1); seq_len_q / seq_len_kv int32 [S].
struct Pointers {
  const void* q_batches = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* stats = nullptr;
  const int32_t* seq_len_q = nullptr;
  const int32_t* seq_len_kv = nullptr;
};

// Whether prepare(p) ran and built a usable plan. Building a graph synchronises with the device, so it must not
// happen while a stream is being captured: a call inside a capture runs only a plan built before.
bool prepared(const Problem& p);

// The workspace the plan needs (bytes).
size_t workspace_bytes(const Plan& plan);

// Runs the plan on stream s (graph-capturable: no allocation, no synchronisation). Throws nfd::Error (internal)
// when cuDNN reports a failure.
void run(const Plan& plan, const Pointers& ptr, void* workspace, cudaStream_t s);

}  // namespace cudnn_sdpa
}  // namespace ops
}  // namespace nfd
