// latent[C, h, w] -> tokens[N, C*p*p]; patch vector order (c, py, px), tokens row-major over the patch grid.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace cuda {
void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens);
}

namespace {
__global__ void patchify_kernel(cudaops::DPtr lat, cudaops::DPtr tok, int C, int h, int w, int p) {
  const int cols = w / p, P = C * p * p;
  const int64_t n_all = int64_t(C) * h * w;
  NFD_GRID_STRIDE(i, n_all) {  // i indexes tokens[N, P]
    const int n = int(i / P), e = int(i % P);
    const int c = e / (p * p), py = (e / p) % p, px = e % p;
    const int y = (n / cols) * p + py, x = (n % cols) * p + px;
    cudaops::st(tok, i, cudaops::ld(lat, (int64_t(c) * h + y) * w + x));
  }
}
}  // namespace

void cuda::patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens) {
  using namespace cudaops;
  const char* op = "patchify";
  require_cuda_float(op, "latent", latent);
  require_cuda_float(op, "tokens", tokens);
  NFD_CHECK(patch > 0 && latent.rank() == 3 && latent.dim(1) % patch == 0 && latent.dim(2) % patch == 0,
            invalid_argument, std::string(op) + ": latent must be [C,h,w] with h, w divisible by patch " +
                                  std::to_string(patch) + ", got " + desc(latent));
  const int C = int(latent.dim(0)), h = int(latent.dim(1)), w = int(latent.dim(2));
  NFD_CHECK(tokens.rank() == 2 && tokens.dim(0) == int64_t(h / patch) * (w / patch) &&
                tokens.dim(1) == int64_t(C) * patch * patch,
            invalid_argument, std::string(op) + ": tokens shape mismatch: " + desc(tokens) + " for " + desc(latent));
  if (latent.numel() == 0) return;
  patchify_kernel<<<grid_1d(latent.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(latent), dp(tokens), C, h, w,
                                                                            patch);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
