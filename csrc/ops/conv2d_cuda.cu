// out[Cout, Ho, Wo] = conv2d(x[Cin, H, W], w[Cout, Cin, k, k], bias; stride, pad) (+ residual).
// First version: implicit GEMM on CUDA cores (simt_gemm.cuh): M = Cout, N = Ho*Wo, K = Cin*k*k; A = w viewed as
// [Cout, K] (already that layout), B(kk, p) = the input pixel under kernel tap kk for output pixel p, gathered on
// the fly (zero outside the image). The output lands directly in [C, H, W]. A CUTLASS NHWC implicit-GEMM conv on
// tensor cores is the planned replacement.
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
}  // namespace

void cuda::conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
                  Tensor& out, const Tensor* residual) {
  using namespace cudaops;
  const char* op = "conv2d";
  require_cuda_float(op, "x", x);
  require_cuda_float(op, "w", w);
  require_cuda_float(op, "out", out);
  NFD_CHECK(x.rank() == 3 && w.rank() == 4 && w.dim(1) == x.dim(0) && w.dim(2) == w.dim(3), invalid_argument,
            std::string(op) + ": expected x[Cin,H,W] and w[Cout,Cin,k,k], got " + x.describe() + " and " + w.describe());
  NFD_CHECK(stride >= 1 && pad >= 0, invalid_argument, std::string(op) + ": stride must be >= 1 and pad >= 0");
  const int Cin = int(x.dim(0)), H = int(x.dim(1)), W = int(x.dim(2)), Cout = int(w.dim(0)), ks = int(w.dim(2));
  const int Ho = (H + 2 * pad - ks) / stride + 1, Wo = (W + 2 * pad - ks) / stride + 1;
  NFD_CHECK(Ho > 0 && Wo > 0 && out.rank() == 3 && out.dim(0) == Cout && out.dim(1) == Ho && out.dim(2) == Wo,
            invalid_argument, std::string(op) + ": out must be [" + std::to_string(Cout) + ", " + std::to_string(Ho) +
                                  ", " + std::to_string(Wo) + "], got " + out.describe());
  if (bias.defined()) {
    require_cuda_float(op, "bias", bias);
    require_numel(op, "bias", bias, Cout);
  }
  const bool has_res = residual && residual->defined();
  if (has_res) {
    require_cuda_float(op, "residual", *residual);
    require_numel(op, "residual", *residual, out.numel());
  }
  const int P = Ho * Wo, K = Cin * ks * ks;
  ConvEpi epi{dp(out), dp(bias), has_res ? dp(*residual) : DPtr{nullptr, DType::f32}, bias.defined(), has_res, P};
  simt_gemm(Cout, P, K, LoadW{dp(w), K}, LoadIm2col{dp(x), H, W, Wo, ks, stride, pad}, epi, stream_of(ctx),
            "conv2d (SIMT implicit GEMM)");
}

}  // namespace ops
}  // namespace nfd
