// ops::noise_mix on CUDA (contract checked in ops/noise_mix.cc):
// out[e] = a * x[e] + b * normal(seed, state->frame_index, step, e)  (Philox4x32-10 + Box-Muller in double,
// core/philox.h, bit-identical to python/nfd_rt/rng.py). The frame index is read from the device FrameState so
// a captured graph uses the current frame at replay. One thread per group of 4 elements (one Philox call).
#include "core/philox.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void noise_mix_kernel(uint64_t seed, uint32_t step, float a, cudaops::DPtr x, bool has_x, float b,
                                 cudaops::DPtr out, int64_t n, const FrameState* state) {
  const uint32_t frame = uint32_t(state->frame_index);
  NFD_GRID_STRIDE(g, (n + 3) / 4) {
    float z[4];
    philox::normal4(seed, frame, step, uint32_t(g), z);
    for (int l = 0; l < 4; ++l) {
      const int64_t e = g * 4 + l;
      if (e >= n) break;
      float v = __fmul_rn(b, z[l]);
      if (has_x) v = __fadd_rn(__fmul_rn(a, cudaops::ld(x, e)), v);
      cudaops::st(out, e, v);
    }
  }
}
}  // namespace

void cuda::noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out) {
  using namespace cudaops;
  const char* op = "noise_mix";
  if (out.numel() == 0) return;
  const int64_t groups = (out.numel() + 3) / 4;
  noise_mix_kernel<<<grid_1d(groups, 128), 128, 0, stream_of(ctx)>>>(seed, uint32_t(step), a, dp(x), x.defined(), b,
                                                                     dp(out), out.numel(), ctx.state);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
