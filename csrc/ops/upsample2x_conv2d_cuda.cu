// ops::upsample2x_conv2d on CUDA (contract checked in ops/upsample2x_conv2d.cc): the upsample kernel into a
// stream-ordered scratch image, then ops::conv2d
// (tensor-core im2col + GEMM for bf16/fp16). The phase decomposition of the CPU backend would save the
// upsampled image here too; it is left for when it can be measured on a GPU.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {

void cuda::upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  using namespace cudaops;
  cudaStream_t s = stream_of(ctx);
  Scratch up(size_t(x.numel()) * 4 * dtype_size(x.dtype), s);
  Tensor up_t{up.get<void>(), x.dtype, Device::cuda, {x.dim(0), 2 * x.dim(1), 2 * x.dim(2)}};
  cuda::upsample_nearest2x(ctx, x, up_t);
  cuda::conv2d(ctx, up_t, w, bias, 1, 1, out, nullptr);
}

}  // namespace ops
}  // namespace nfd
