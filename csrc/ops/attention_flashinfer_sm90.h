// FlashInfer's Hopper attention behind ops::attention on sm_90 (ops/attention_cuda_flashinfer_sm90.cu, built with
// CMake -DNFD_RT_FLASHINFER=ON when NFD_RT_CUDA_ARCHITECTURES has 90a: NFD_RT_WITH_FLASHINFER_SM90). The plan and
// the views: ops/attention_flashinfer_layout.h. Unverified on a GPU until a GPU run says otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"
#include "ops/attention_flashinfer_layout.h"

namespace nfd {
namespace ops {
namespace cuda_detail {

// One call: q_copies = S copies of q as [H, S * N, hd]; k/v = the token-major caches [*, Hkv, hd], of which the
// first kv_len rows are read; partials [S * N, H, hd] (dtype) and lse [S * N, H] (float) receive each split's
// normalised rows and their log-sum-exp (log2 units); plan = flashinfer_sm90_plan_ints(split, ctas) int32s of
// device scratch for the work list; ctas = the persistent grid (the SM count).
struct FlashInferSm90Call {
  DType dtype = DType::bf16;
  const void *q_copies = nullptr, *k = nullptr, *v = nullptr;
  void* partials = nullptr;
  float* lse = nullptr;
  int32_t* plan = nullptr;
  int N = 0, H = 0, Hkv = 0, hd = 0;
  int64_t kv_len = 0;
  tile::fi90::RaggedSplit split;
  int ctas = 0;
  float sm_scale = 0.f;
};

int flashinfer_sm90_plan_ints(const tile::fi90::RaggedSplit& split, int ctas);

// Runs the call; false (nothing launched) for a problem it does not take (head_dim other than 64, dtype other than
// bf16/fp16, no keys, heads not a multiple of Hkv). Launch errors throw nfd::Error.
bool flashinfer_sm90_attention(const FlashInferSm90Call& call, cudaStream_t s);

}  // namespace cuda_detail
}  // namespace ops
}  // namespace nfd
