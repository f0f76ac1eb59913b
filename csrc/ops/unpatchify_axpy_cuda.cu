// latent[C, h, w] += dt * unpatchify(tokens[N, C*p*p]) (the Euler step fused with unpatchify).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace cuda {
void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent);
}

namespace {
__global__ void unpatchify_axpy_kernel(cudaops::DPtr tok, cudaops::DPtr lat, float dt, int C, int h, int w, int p) {
  const int cols = w / p, P = C * p * p;
  const int64_t n_all = int64_t(C) * h * w;
  NFD_GRID_STRIDE(i, n_all) {  // i indexes latent[C, h, w]
    const int x = int(i % w), y = int((i / w) % h), c = int(i / (int64_t(w) * h));
    const int n = (y / p) * cols + x / p, e = (c * p + y % p) * p + x % p;
    // No FMA contraction: same rounding as the CPU backend's `latent + dt * v`.
    cudaops::st(lat, i, __fadd_rn(cudaops::ld(lat, i), __fmul_rn(dt, cudaops::ld(tok, int64_t(n) * P + e))));
  }
}
}  // namespace

void cuda::unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent) {
  using namespace cudaops;
  const char* op = "unpatchify_axpy";
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
  unpatchify_axpy_kernel<<<grid_1d(latent.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(tokens), dp(latent), dt, C,
                                                                                    h, w, patch);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
