// ops::copy on CUDA (contract checked in ops/copy.cc): tensors of the same shape, at least one of them on cuda; dtype
// conversion among
// f32/bf16/f16 runs on the device (host data are staged through stream-ordered scratch memory). Copies that
// touch host memory are synchronous on ctx.stream (the host buffer is ready / reusable on return).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void convert_kernel(cudaops::DPtr src, cudaops::DPtr dst, int64_t n) {
  NFD_GRID_STRIDE(i, n) { cudaops::st(dst, i, cudaops::ld(src, i)); }
}
}  // namespace

void cuda::copy(const Context& ctx, const Tensor& src, Tensor& dst) {
  using namespace cudaops;
  const char* op = "copy";
  const int64_t n = src.numel();
  if (n == 0) return;
  cudaStream_t s = stream_of(ctx);
  const bool same = src.dtype == dst.dtype;
  const size_t src_bytes = size_t(n) * dtype_size(src.dtype), dst_bytes = size_t(n) * dtype_size(dst.dtype);

  if (src.device == Device::cuda && dst.device == Device::cuda) {
    if (same) {
      check(cudaMemcpyAsync(dst.data, src.data, src_bytes, cudaMemcpyDeviceToDevice, s), "copy D2D");
    } else {
      convert_kernel<<<grid_1d(n, 256), 256, 0, s>>>(dp(src), dp(dst), n);
      check_launch(op);
    }
    return;
  }
  if (dst.device == Device::cuda) {  // host -> device
    if (same) {
      check(cudaMemcpyAsync(dst.data, src.data, src_bytes, cudaMemcpyHostToDevice, s), "copy H2D");
    } else {
      Scratch tmp(src_bytes, s);
      check(cudaMemcpyAsync(tmp.get<void>(), src.data, src_bytes, cudaMemcpyHostToDevice, s), "copy H2D");
      convert_kernel<<<grid_1d(n, 256), 256, 0, s>>>(DPtr{tmp.get<void>(), src.dtype}, dp(dst), n);
      check_launch(op);
    }
  } else {  // device -> host
    if (same) {
      check(cudaMemcpyAsync(dst.data, src.data, src_bytes, cudaMemcpyDeviceToHost, s), "copy D2H");
    } else {
      Scratch tmp(dst_bytes, s);
      convert_kernel<<<grid_1d(n, 256), 256, 0, s>>>(dp(src), DPtr{tmp.get<void>(), dst.dtype}, n);
      check_launch(op);
      check(cudaMemcpyAsync(dst.data, tmp.get<void>(), dst_bytes, cudaMemcpyDeviceToHost, s), "copy D2H");
    }
  }
  check(cudaStreamSynchronize(s), "copy: cudaStreamSynchronize");
}

}  // namespace ops
}  // namespace nfd
