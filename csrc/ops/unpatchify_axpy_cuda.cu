// ops::unpatchify_axpy on CUDA (contract checked in ops/unpatchify_axpy.cc):
// latent[C, h, w] = keep * latent + dt * unpatchify(tokens[N, C*p*p]) (the Euler step, keep 1, or a DDIM step
// fused with unpatchify; keep 0 writes without reading).
#include "ops/cuda_common.cuh"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace {
__global__ void unpatchify_axpy_kernel(cudaops::DPtr tok, cudaops::DPtr lat, float dt, float keep, int C, int h, int w,
                                       int p) {
  const int64_t n_all = int64_t(C) * h * w;
  NFD_GRID_STRIDE(i, n_all) {  // i indexes latent[C, h, w]
    const int64_t x = i % w, y = (i / w) % h, c = i / (int64_t(w) * h);
    const float v = cudaops::ld(tok, patch_token_offset(c, y, x, C, w, p));
    // No FMA contraction: same rounding as the CPU backend's `latent + dt * v` / `keep * latent + dt * v`.
    const float add = __fmul_rn(dt, v);
    const float out = keep == 1.f ? __fadd_rn(cudaops::ld(lat, i), add)
                      : keep == 0.f ? add
                                    : __fadd_rn(__fmul_rn(keep, cudaops::ld(lat, i)), add);
    cudaops::st(lat, i, out);
  }
}
}  // namespace

void cuda::unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent,
                           float keep) {
  using namespace cudaops;
  const char* op = "unpatchify_axpy";
  const int C = int(latent.dim(0)), h = int(latent.dim(1)), w = int(latent.dim(2));
  if (latent.numel() == 0) return;
  unpatchify_axpy_kernel<<<grid_1d(latent.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(tokens), dp(latent), dt, keep,
                                                                                    C, h, w, patch);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
