// FlashInfer's single-prefill attention (FA2 tile kernel, header-only from the flashinfer-python wheel) behind
// ops::attention when NFD_RT_ATTENTION=flashinfer: the measured peer of our own kernel (ops/attention_cuda.cu).
// Compiled only with CMake -DNFD_RT_FLASHINFER=ON (see docs/cuda-backend.md; its bundled CCCL comes first on
// the include path, set on this file alone).
//
// Our tensors as FlashInfer sees them: q [H, N, hd] = NHD with q_stride_n = hd, q_stride_h = N*hd; the first
// kv_len rows of the token-major caches [slots*N, H, hd] with k_stride_n = H*hd, k_stride_h = hd; out [N, H*hd]
// (FlashInfer's own output layout). No mask, no RoPE (keys are stored rotated), sm_scale = 1/sqrt(hd).
// FlashInfer splits the key range itself when given a workspace (`tmp`, its partials in the output dtype):
// sized here for its largest split count, from stream-ordered scratch so the call stays graph-capturable.
// kv_len and the split count are fixed at launch on the host: a captured graph holds one fill level.
#include <flashinfer/attention/default_prefill_params.cuh>
#include <flashinfer/attention/prefill.cuh>
#include <flashinfer/attention/variants.cuh>

#include <cmath>
#include <exception>
#include <string>

#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace cuda_detail {
namespace {

template <typename T, int HD>
void run(const void* q, const void* k, const void* v, void* out, int N, int H, int kv_len, cudaStream_t s) {
  using Params = flashinfer::SinglePrefillParams<T, T, T>;
  Params p(static_cast<T*>(const_cast<void*>(q)), static_cast<T*>(const_cast<void*>(k)),
           static_cast<T*>(const_cast<void*>(v)), /*maybe_custom_mask=*/nullptr, static_cast<T*>(out),
           /*lse=*/nullptr, /*maybe_alibi_slopes=*/nullptr, uint32_t(H), uint32_t(H), uint32_t(N),
           uint32_t(kv_len), /*q_stride_n=*/uint32_t(HD), /*q_stride_h=*/uint32_t(N) * HD,
           /*kv_stride_n=*/uint32_t(H) * HD, /*kv_stride_h=*/uint32_t(HD), uint32_t(HD), /*window_left=*/-1,
           /*logits_soft_cap=*/0.f, float(1.0 / std::sqrt(double(HD))), /*rope_scale=*/1.f,
           /*rope_theta=*/1e4f);
  // FlashInfer uses at most ceil(kv_len / 256) chunks (its minimum chunk is 256 keys): partials
  // [chunks, N, H, HD] in T, then [chunks, N, H] floats of log-sum-exp.
  const size_t chunks = (size_t(kv_len) + 255) / 256;
  const size_t o_bytes = chunks * N * H * HD * sizeof(T), lse_bytes = chunks * N * H * sizeof(float);
  cudaops::Scratch tmp((o_bytes + 15) / 16 * 16 + lse_bytes, s);
  cudaError_t e;
  try {
    e = flashinfer::SinglePrefillWithKVCacheDispatched<HD, HD, flashinfer::PosEncodingMode::kNone,
                                                       /*USE_FP16_QK_REDUCTION=*/false, flashinfer::MaskMode::kNone,
                                                       flashinfer::DefaultAttention<false, false, false, false>,
                                                       Params>(p, tmp.get<T>(), s);
  } catch (const std::exception& ex) {  // FLASHINFER_ERROR throws
    fail(ErrorKind::internal, std::string("attention (FlashInfer): ") + ex.what());
  }
  cudaops::check(e, "attention (FlashInfer SinglePrefillWithKVCache)");
}

}  // namespace

bool flashinfer_attention(DType dtype, const void* q, const void* k, const void* v, void* out, int N, int H, int hd,
                          int kv_len, cudaStream_t s) {
  if (kv_len <= 0 || N <= 0) return false;
  // head_dim 64 only (every named config): each instantiation costs ~10 s of compile time per architecture.
  if (hd != 64) return false;
  if (dtype == DType::bf16) return run<__nv_bfloat16, 64>(q, k, v, out, N, H, kv_len, s), true;
  if (dtype == DType::f16) return run<__half, 64>(q, k, v, out, N, H, kv_len, s), true;
  return false;
}

}  // namespace cuda_detail
}  // namespace ops
}  // namespace nfd
