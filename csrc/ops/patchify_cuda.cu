// ops::patchify on CUDA (contract checked in ops/patchify.cc): latent[C, h, w] -> tokens[N, C*p*p]; patch vector order
// (c, py, px), tokens row-major over the patch grid.
#include "ops/cuda_common.cuh"
#include "ops/patch_layout.h"

namespace nfd {
namespace ops {
namespace {
__global__ void patchify_kernel(cudaops::DPtr lat, cudaops::DPtr tok, int C, int h, int w, int p) {
  const int64_t n_all = int64_t(C) * h * w;
  NFD_GRID_STRIDE(i, n_all) {  // i indexes latent[C, h, w]
    const int64_t x = i % w, y = (i / w) % h, c = i / (int64_t(w) * h);
    cudaops::st(tok, patch_token_offset(c, y, x, C, w, p), cudaops::ld(lat, i));
  }
}
}  // namespace

void cuda::patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  using namespace cudaops;
  const char* op = "patchify";
  const int C = int(latent.dim(0)), h = int(latent.dim(1)), w = int(latent.dim(2));
  if (latent.numel() == 0) return;
  patchify_kernel<<<grid_1d(latent.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(latent), dp(tokens), C, h, w,
                                                                            patch);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
