// CUDA attention: the arguments and split partials every kernel family shares, and the visible-slot list.
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_math.h"
#include "ops/attention_mma.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {

using tile::mma::kBK;


// Split partials (either kernel): o [splits, H, N, hd] fp32 normalised rows, lse [splits, H, N] (log2 units).
struct Partials {
  float* o = nullptr;
  float* lse = nullptr;
};

struct AttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;  // [N, H*hd] (splits == 1)
  Partials part;
  const FrameState* state;
  int N, H, slots, splits;
  float scale_log2;  // log2(e) / sqrt(hd)
  int Hkv;           // K/V heads (GQA: query head h reads K/V head h / (H / Hkv)); H for plain attention
};

// Visible slots into shared memory (-1 for a slot outside the cache: its keys are masked); returns the count.
__device__ __forceinline__ int load_slot_list(const FrameState* state, int slots, int* slot_of) {
  int nvis = state->num_visible;
  nvis = nvis < 0 ? 0 : (nvis > FrameState::kMaxSlots ? FrameState::kMaxSlots : nvis);
  for (int i = threadIdx.x; i < nvis; i += blockDim.x) {
    const int s = state->visible_slots[i];
    slot_of[i] = s >= 0 && s < slots ? s : -1;
  }
  return nvis;
}

}  // namespace
}  // namespace ops
}  // namespace nfd
