// ops::upsample2x_conv2d on CUDA (contract checked in ops/upsample2x_conv2d.cc). bf16/fp16 with Cin % 8 == 0:
// the tensor-core implicit GEMM of ops/conv2d_cuda.cu with the 2x nearest upsampling folded into its NHWC
// transpose (the upsampled image is written once, already in the layout the GEMM reads). Else: the upsample
// kernel into a stream-ordered scratch image, then ops::conv2d.
#include "ops/cuda_common.cuh"
#include "ops/cuda_gemm.h"

namespace nfd {
namespace ops {

void cuda::upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  using namespace cudaops;
  if (cuda_detail::conv2d_implicit_gemm_eligible(x)) {
    cuda_detail::conv2d_implicit_gemm(ctx, x, w, bias, 1, 1, true, out, nullptr);
    return;
  }
  cudaStream_t s = stream_of(ctx);
  Scratch up(size_t(x.numel()) * 4 * dtype_size(x.dtype), s);
  Tensor up_t{up.get<void>(), x.dtype, Device::cuda, {x.dim(0), 2 * x.dim(1), 2 * x.dim(2)}};
  cuda::upsample_nearest2x(ctx, x, up_t);
  cuda::conv2d(ctx, up_t, w, bias, 1, 1, out, nullptr, Activation::none);
}

}  // namespace ops
}  // namespace nfd
