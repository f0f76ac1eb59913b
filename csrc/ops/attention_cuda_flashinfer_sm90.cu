// FlashInfer's Hopper attention (FA3 design: TMA loads, wgmma, a producer warp group and two consumer warp groups,
// one persistent CTA per SM) behind ops::attention as an engine timed at session open: header-only from the
// flashinfer-python wheel, compiled only for sm_90a (CMake -DNFD_RT_FLASHINFER=ON with 90a in
// NFD_RT_CUDA_ARCHITECTURES, docs/cuda-backend.md). Unverified on a GPU until a run says otherwise.
//
// The key range is split into requests of FlashInfer's batch ragged form, and the work list its persistent
// scheduler reads is written on the device by flashinfer_plan_kernel (no host upload, so the call is
// graph-capturable): ops/attention_flashinfer_layout.h has the plan and the index maps, shared with the emulation
// test. This file runs the kernel into partials; ops/attention_cuda.cu copies q and merges the partials.
#include <flashinfer/attention/hopper/default_params.cuh>
#include <flashinfer/attention/hopper/prefill_sm90.cuh>
#include <flashinfer/attention/hopper/variants.cuh>
#include <flashinfer/attention/mask.cuh>

#include <exception>
#include <string>

#include "ops/attention_flashinfer_sm90.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace cuda_detail {
namespace {

namespace fi90 = tile::fi90;

// The scheduler's arrays in one int32 buffer: work_indptr [ctas + 1], then per item qo_tile, head, split (its
// batch index), qo_indptr, kv_indptr, qo_len, kv_len.
struct PlanArrays {
  int32_t *work_indptr, *qo_tile, *head, *batch, *qo_indptr, *kv_indptr, *qo_len, *kv_len;
};
PlanArrays plan_arrays(int32_t* base, int items, int ctas) {
  PlanArrays a;
  int32_t* p = base + ctas + 1;
  a.work_indptr = base;
  for (int32_t** field : {&a.qo_tile, &a.head, &a.batch, &a.qo_indptr, &a.kv_indptr, &a.qo_len, &a.kv_len}) {
    *field = p;
    p += items;
  }
  return a;
}

__global__ void flashinfer_plan_kernel(PlanArrays a, fi90::RaggedSplit r, int64_t kv_len, int n, int h, int ctas) {
  for (int c = threadIdx.x; c <= ctas; c += blockDim.x) a.work_indptr[c] = fi90::work_begin(r.items, ctas, c);
  for (int w = threadIdx.x; w < r.items; w += blockDim.x) {
    const fi90::WorkItem it = fi90::work_item(r, kv_len, n, h, w);
    a.qo_tile[w] = it.q_tile, a.head[w] = it.head, a.batch[w] = it.split;
    a.qo_indptr[w] = it.qo_indptr, a.kv_indptr[w] = it.kv_indptr, a.qo_len[w] = it.qo_len, a.kv_len[w] = it.kv_len;
  }
}

template <typename T>  // cutlass::bfloat16_t or cutlass::half_t
void run(const FlashInferSm90Call& c, cudaStream_t s) {
  using Params = flashinfer::BatchPrefillRaggedParams<T, T, T, int32_t>;
  const fi90::RaggedSplit& r = c.split;
  const PlanArrays a = plan_arrays(c.plan, r.items, c.ctas);
  flashinfer_plan_kernel<<<1, 256, 0, s>>>(a, r, c.kv_len, c.N, c.H, c.ctas);
  cudaops::check_launch("attention (FlashInfer sm90 work list)");

  Params p{};
  p.q_ptr = static_cast<T*>(const_cast<void*>(c.q_copies));
  p.k_ptr = static_cast<T*>(const_cast<void*>(c.k));
  p.v_ptr = static_cast<T*>(const_cast<void*>(c.v));
  p.o_ptr = static_cast<T*>(c.partials);
  p.lse_ptr = c.lse;
  p.qo_tile_indices = a.qo_tile, p.qo_indptr = a.qo_indptr, p.kv_indptr = a.kv_indptr;
  p.qo_lens = a.qo_len, p.kv_lens = a.kv_len, p.head_indices = a.head, p.work_indptr = a.work_indptr;
  p.batch_indices = a.batch;
  p.additional_params.logits_soft_cap = 0.f;
  p.additional_params.sm_scale = c.sm_scale;
  const fi90::Strides st = fi90::ragged_strides(c.N, c.H, c.Hkv, c.hd, r.splits);
  p.q_stride_n = st.q_n, p.q_stride_h = st.q_h;
  p.k_stride_n = p.v_stride_n = st.kv_n, p.k_stride_h = p.v_stride_h = st.kv_h;
  p.o_stride_n = st.o_n, p.o_stride_h = st.o_h;
  p.nnz_qo = int64_t(r.splits) * c.N;
  p.nnz_kv = c.kv_len;  // TMA zero-fills past the live keys (the last tile of the last split)
  p.num_qo_heads = c.H, p.num_kv_heads = c.Hkv, p.group_size = c.H / c.Hkv;
  p.window_left = -1;
  p.causal = false;
  cudaError_t e;
  try {
    e = flashinfer::BatchPrefillWithRaggedKVCacheDispatched<64, 64, flashinfer::MaskMode::kNone,
                                                            /*LEFT_SLIDING_WINDOW=*/false,
                                                            /*SAME_SCHEDULE_FOR_ALL_HEADS=*/false,
                                                            flashinfer::StandardAttention>(p, /*enable_pdl=*/false, s);
  } catch (const std::exception& ex) {  // FLASHINFER_ERROR throws
    fail(ErrorKind::internal, std::string("attention (FlashInfer sm90): ") + ex.what());
  }
  cudaops::check(e, "attention (FlashInfer BatchPrefillWithRaggedKVCache, sm90)");
}

}  // namespace

int flashinfer_sm90_plan_ints(const tile::fi90::RaggedSplit& r, int ctas) { return ctas + 1 + 7 * r.items; }

bool flashinfer_sm90_attention(const FlashInferSm90Call& c, cudaStream_t s) {
  if (c.hd != 64 || c.kv_len <= 0 || c.N <= 0 || c.Hkv <= 0 || c.H % c.Hkv != 0) return false;
  if (c.dtype == DType::bf16) run<cutlass::bfloat16_t>(c, s);
  else if (c.dtype == DType::f16) run<cutlass::half_t>(c, s);
  else return false;
  return true;
}

}  // namespace cuda_detail
}  // namespace ops
}  // namespace nfd
