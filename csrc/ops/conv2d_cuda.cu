// out[Cout, Ho, Wo] = conv2d(x[Cin, H, W], w[Cout, Cin, k, k], bias; stride, pad) (+ residual).
// bf16/fp16 with Cin*k*k and Cout multiples of 8 (every VAE conv but tiny's conv_in): tensor cores through the
// CUTLASS GEMM of ops::linear on an explicit im2col, col[P, K] @ w[Cout, K]^T + bias = prod[P, Cout], then a
// tiled transpose into [Cout, P] that adds the residual. Else: implicit GEMM on CUDA cores (simt_gemm.cuh),
// M = Cout, N = Ho*Wo, K = Cin*k*k, B(kk, p) = the input pixel under tap kk for output pixel p, gathered on the
// fly (zero outside the image), the output written directly in [C, H, W]. A CUTLASS NHWC implicit-GEMM conv
// (no col buffer) is the next step.
#include "ops/cuda_common.cuh"
#include "ops/simt_gemm.cuh"

namespace nfd {
namespace ops {
namespace {
struct LoadW {
  cudaops::DPtr w;
  int K;
  __device__ float operator()(int m, int k) const { return cudaops::ld(w, int64_t(m) * K + k); }
};
struct LoadIm2col {
  cudaops::DPtr x;
  int H, W, Wo, ks, stride, pad;
  __device__ float operator()(int kk, int p) const {
    const int ci = kk / (ks * ks), ky = (kk / ks) % ks, kx = kk % ks;
    const int iy = (p / Wo) * stride - pad + ky, ix = (p % Wo) * stride - pad + kx;
    if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
    return cudaops::ld(x, (int64_t(ci) * H + iy) * W + ix);
  }
};
struct ConvEpi {
  cudaops::DPtr out, bias, res;
  bool has_bias, has_res;
  int P;
  __device__ void operator()(int m, int p, float acc) const {
    const int64_t i = int64_t(m) * P + p;
    if (has_bias) acc = __fadd_rn(acc, cudaops::ld(bias, m));
    if (has_res) acc = __fadd_rn(acc, cudaops::ld(res, i));
    cudaops::st(out, i, acc);
  }
};
// col[p, kk] = x under kernel tap kk for output pixel p (0 outside the image).
__global__ void im2col_kernel(cudaops::DPtr x, cudaops::DPtr col, int H, int W, int Wo, int ks, int stride, int pad,
                              int K, int64_t total) {
  NFD_GRID_STRIDE(i, total) {
    const int kk = int(i % K);
    const int64_t p = i / K;
    const int ci = kk / (ks * ks), ky = (kk / ks) % ks, kx = kk % ks;
    const int iy = int(p / Wo) * stride - pad + ky, ix = int(p % Wo) * stride - pad + kx;
    const bool inside = iy >= 0 && iy < H && ix >= 0 && ix < W;
    cudaops::st(col, i, inside ? cudaops::ld(x, (int64_t(ci) * H + iy) * W + ix) : 0.f);
  }
}

// out[c, p] = prod[p, c] (+ res[c, p]) through a 32x32 shared tile, so reads and writes are both coalesced.
__global__ void transpose_add_kernel(cudaops::DPtr prod, cudaops::DPtr out, cudaops::DPtr res, bool has_res, int P,
                                     int C) {
  __shared__ float tile[32][33];
  const int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: pixel within the tile, threadIdx.x: channel
    const int p = p0 + r, c = c0 + threadIdx.x;
    if (p < P && c < C) tile[r][threadIdx.x] = cudaops::ld(prod, int64_t(p) * C + c);
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: channel within the tile, threadIdx.x: pixel
    const int c = c0 + r, p = p0 + threadIdx.x;
    if (p < P && c < C) {
      const int64_t o = int64_t(c) * P + p;
      const float v = tile[threadIdx.x][r];
      cudaops::st(out, o, has_res ? cudaops::ld(res, o) + v : v);
    }
  }
}
}  // namespace

void cuda::conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
                  Tensor& out, const Tensor* residual) {
  using namespace cudaops;
  const int Cin = int(x.dim(0)), H = int(x.dim(1)), W = int(x.dim(2)), Cout = int(w.dim(0)), ks = int(w.dim(2));
  const int Ho = int(out.dim(1)), Wo = int(out.dim(2));
  const bool has_res = residual && residual->defined();
  const int P = Ho * Wo, K = Cin * ks * ks;
  const bool half = x.dtype == DType::bf16 || x.dtype == DType::f16;  // one dtype for all (the contract)
  if (half && K % 8 == 0 && Cout % 8 == 0) {
    cudaStream_t s = stream_of(ctx);
    const size_t es = dtype_size(x.dtype);
    Scratch col(size_t(P) * K * es, s), prod(size_t(P) * Cout * es, s);
    Tensor col_t{col.get<void>(), x.dtype, Device::cuda, {P, K}};
    Tensor prod_t{prod.get<void>(), x.dtype, Device::cuda, {P, Cout}};
    Tensor w_t{w.data, w.dtype, Device::cuda, {Cout, K}};
    im2col_kernel<<<grid_1d(int64_t(P) * K, 256), 256, 0, s>>>(dp(x), dp(col_t), H, W, Wo, ks, stride, pad, K,
                                                               int64_t(P) * K);
    check_launch("conv2d (im2col)");
    cuda::linear(ctx, col_t, w_t, bias, prod_t, Epilogue::none, nullptr);
    const dim3 grid(unsigned((P + 31) / 32), unsigned((Cout + 31) / 32)), block(32, 8);
    transpose_add_kernel<<<grid, block, 0, s>>>(dp(prod_t), dp(out), has_res ? dp(*residual) : dp(out), has_res, P,
                                                Cout);
    check_launch("conv2d (transpose)");
    return;
  }
  ConvEpi epi{dp(out), dp(bias), has_res ? dp(*residual) : DPtr{nullptr, DType::f32}, bias.defined(), has_res, P};
  simt_gemm(Cout, P, K, LoadW{dp(w), K}, LoadIm2col{dp(x), H, W, Wo, ks, stride, pad}, epi, stream_of(ctx),
            "conv2d (SIMT implicit GEMM)");
}

}  // namespace ops
}  // namespace nfd
