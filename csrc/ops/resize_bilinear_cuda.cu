// ops::resize_bilinear on CUDA (contract checked in ops/resize_bilinear.cc): one thread per output element, the
// index map of ops/resize_bilinear_math.h, fp32 without FMA contraction (unverified on a GPU).
#include "ops/cuda_common.cuh"
#include "ops/resize_bilinear_math.h"

namespace nfd {
namespace ops {
namespace {
__global__ void resize_bilinear_kernel(cudaops::DPtr x, cudaops::DPtr out, int H, int W, int Ho, int Wo, int64_t n) {
  NFD_GRID_STRIDE(e, n) {
    const int j = int(e % Wo), i = int((e / Wo) % Ho);
    const int64_t c = e / (int64_t(Wo) * Ho);
    const tile::Lerp r = tile::bilinear_source(i, H, Ho), q = tile::bilinear_source(j, W, Wo);
    const int64_t a = (c * H + r.i0) * W, b = (c * H + r.i1) * W;
    const float top = __fadd_rn(__fmul_rn(q.w0, cudaops::ld(x, a + q.i0)), __fmul_rn(q.w1, cudaops::ld(x, a + q.i1)));
    const float bot = __fadd_rn(__fmul_rn(q.w0, cudaops::ld(x, b + q.i0)), __fmul_rn(q.w1, cudaops::ld(x, b + q.i1)));
    cudaops::st(out, e, __fadd_rn(__fmul_rn(r.w0, top), __fmul_rn(r.w1, bot)));
  }
}
}  // namespace

void cuda::resize_bilinear(const Context& ctx, const Tensor& x, Tensor& out) {
  using namespace cudaops;
  if (out.numel() == 0) return;
  resize_bilinear_kernel<<<grid_1d(out.numel(), 256), 256, 0, stream_of(ctx)>>>(
      dp(x), dp(out), int(x.dim(1)), int(x.dim(2)), int(out.dim(1)), int(out.dim(2)), out.numel());
  check_launch("resize_bilinear");
}

}  // namespace ops
}  // namespace nfd
