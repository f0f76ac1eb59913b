// out[Cout, Ho, Wo] = conv2d(x[Cin, H, W], w[Cout, Cin, k, k], bias; stride, pad) (+ residual).
//
// bf16/fp16 with Cin % 8 == 0 (every VAE conv but tiny's conv_in and the encoder's RGB input): an NHWC
// implicit GEMM on tensor cores, CUTLASS 2.x conv2d fprop (Sm80 tensor ops, runs on sm_80/89/90), no im2col
// buffer. The ops keep the [C, H, W] layout of the rest of the runtime, so three small kernels frame it:
//   1. xs[Hi, Wi, Cin] = x, a tiled transpose (for upsample2x_conv2d the 2x nearest upsampling is folded in
//      here: the upsampled image is only ever written in NHWC);
//   2. wk[Co8, k, k, Cin] = w and b8[Co8] = bias, Cout rounded up to 8 with zero filters so the GEMM's N side
//      is 16-byte aligned (conv_out's 3 channels run on tensor cores too);
//   3. prod[Ho, Wo, Co8] = conv(xs, wk) + b8 (bias fused as the epilogue's source with a zero pixel stride),
//      then out[c, p] = prod[p, c] (+ residual[c, p]) for c < Cout, a tiled transpose.
// Rounding equals the former im2col path: fp32 accumulation, bias added before one rounding to the dtype,
// the residual added in fp32 after it. The transposes cost 2 passes over the activations, far below what the
// im2col columns did (9x Cin per pixel); an NHWC VAE end to end would remove them too.
// NFD_RT_CONV=im2col (or Cin % 8 != 0 with Cin*k*k and Cout multiples of 8): the former path, an explicit
// im2col into scratch, ops::linear's GEMM and the transpose back (kept as a measured fallback).
// Else (fp32, other shapes): implicit GEMM on CUDA cores (simt_gemm.cuh), M = Cout, N = Ho*Wo, K = Cin*k*k,
// B(kk, p) = the input pixel under tap kk for output pixel p, gathered on the fly (zero outside the image), the
// output written directly in [C, H, W].
#include <cutlass/conv/conv2d_problem_size.h>
#include <cutlass/conv/device/implicit_gemm_convolution.h>
#include <cutlass/conv/kernel/default_conv2d_fprop.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cuda_common.cuh"
#include "ops/cutlass_status.cuh"
#include "ops/conv2d_layout.h"
#include "ops/cuda_gemm.h"
#include "ops/kernel_report.h"
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

// col[p, kk] = x under kernel tap kk for output pixel p (0 outside the image): the im2col engine.
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

// --- the tensor-core path ------------------------------------------------------------------------------------
using conv_layout::kChannelAlign;

// xs[p, c] = x[c, nhwc_source_pixel(p)] for the P pixels of the Wi-wide NHWC image: a 32x32 shared tile, so
// both the [C, P] reads and the [P, C] writes are coalesced.
__global__ void to_nhwc_kernel(cudaops::DPtr x, cudaops::DPtr xs, int C, int W, int64_t P_x, int Wi, int64_t P,
                               int up) {
  __shared__ float tile[32][33];
  const int64_t p0 = int64_t(blockIdx.x) * 32;
  const int c0 = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: channel within the tile, threadIdx.x: pixel
    const int c = c0 + r;
    const int64_t p = p0 + threadIdx.x;
    if (c < C && p < P) {
      tile[r][threadIdx.x] = cudaops::ld(x, int64_t(c) * P_x + conv_layout::nhwc_source_pixel(p, Wi, W, up));
    }
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: pixel within the tile, threadIdx.x: channel
    const int64_t p = p0 + r;
    const int c = c0 + threadIdx.x;
    if (c < C && p < P) cudaops::st(xs, p * C + c, tile[threadIdx.x][r]);
  }
}

// wk[o, tap, c] = w[o, c, tap] and b8[o] = bias[o]; zero for the padding filters o >= Cout (and without bias).
__global__ void filters_to_krsc_kernel(cudaops::DPtr w, cudaops::DPtr bias, bool has_bias, cudaops::DPtr wk,
                                       cudaops::DPtr b8, int Cout, int Co8, int Cin, int taps) {
  const int64_t nw = int64_t(Co8) * taps * Cin;
  NFD_GRID_STRIDE(i, nw + Co8) {
    if (i < nw) {
      int o;
      const int64_t src = conv_layout::krsc_source(i, Cin, taps, &o);
      cudaops::st(wk, i, o < Cout ? cudaops::ld(w, src) : 0.f);
    } else {
      const int o = int(i - nw);
      cudaops::st(b8, o, has_bias && o < Cout ? cudaops::ld(bias, o) : 0.f);
    }
  }
}

// out[c, p] = prod[p, c] (+ res[c, p]) for c < C, prod's rows ld apart; a 32x32 shared tile.
__global__ void from_nhwc_add_kernel(cudaops::DPtr prod, int ld, cudaops::DPtr out, cudaops::DPtr res, bool has_res,
                                     int64_t P, int C) {
  __shared__ float tile[32][33];
  const int64_t p0 = int64_t(blockIdx.x) * 32;
  const int c0 = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: pixel within the tile, threadIdx.x: channel
    const int64_t p = p0 + r;
    const int c = c0 + threadIdx.x;
    if (p < P && c < C) tile[r][threadIdx.x] = cudaops::ld(prod, p * ld + c);
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {  // r: channel within the tile, threadIdx.x: pixel
    const int c = c0 + r;
    const int64_t p = p0 + threadIdx.x;
    if (p < P && c < C) {
      const int64_t o = int64_t(c) * P + p;
      const float v = tile[threadIdx.x][r];
      cudaops::st(out, o, has_res ? cudaops::ld(res, o) + v : v);
    }
  }
}

// One CUTLASS instantiation per dtype: 128x64x32 tiles (4 warps of 64x32), 3 stages (36 KiB of shared memory,
// under the 48 KiB that would need an attribute call). M = output pixels (1,344 to 86,016 in nfd-310m's
// decoder), N = Co8 (8 to 256), K = k*k*Cin.
template <typename T>
struct CutlassConv {
  using Layout = cutlass::layout::TensorNHWC;
  using Epilogue = cutlass::epilogue::thread::LinearCombination<T, kChannelAlign, float, float>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFprop<
      T, Layout, T, Layout, T, Layout, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      cutlass::gemm::GemmShape<128, 64, 32>, cutlass::gemm::GemmShape<64, 32, 32>,
      cutlass::gemm::GemmShape<16, 8, 16>, Epilogue, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>,
      3, cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Conv = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;

  static void run(const cutlass::conv::Conv2dProblemSize& pb, const void* xs, const void* wk, const void* b8,
                  void* prod, cudaStream_t s) {
    using Ref = cutlass::TensorRef<T, Layout>;
    const Layout bias_rows(typename Layout::Stride(0));  // every output pixel reads the same Co8 biases
    typename Conv::Arguments args(
        pb, Ref(static_cast<T*>(const_cast<void*>(xs)), Layout::packed({pb.N, pb.H, pb.W, pb.C})),
        Ref(static_cast<T*>(const_cast<void*>(wk)), Layout::packed({pb.K, pb.R, pb.S, pb.C})),
        Ref(static_cast<T*>(const_cast<void*>(b8)), bias_rows),
        Ref(static_cast<T*>(prod), Layout::packed({pb.N, pb.P, pb.Q, pb.K})), {1.f, 1.f});
    Conv conv;
    constexpr size_t smem = sizeof(typename Kernel::SharedStorage);
    cudaops::check_cutlass(conv.can_implement(args), "conv2d: CUTLASS cannot run this problem", s, smem);
    NFD_CHECK(conv.get_workspace_size(args) == 0, internal, "conv2d: CUTLASS asked for a workspace (split-K is off)");
    cudaops::check_cutlass(conv.initialize(args, nullptr, s), "conv2d: CUTLASS initialize failed", s, smem);
    cudaops::check_cutlass(conv(s), "conv2d: CUTLASS implicit GEMM failed", s, smem);
    cudaops::check_launch("conv2d (CUTLASS implicit GEMM)");
  }
};

// The kernels_used() key of a convolution: "conv2d bf16 128->64 k3 s1".
std::string kernel_key(const char* op, const Tensor& x, const Tensor& w, int stride) {
  return std::string(op) + " " + dtype_name(x.dtype) + " " + std::to_string(x.dim(0)) + "->" +
         std::to_string(w.dim(0)) + " k" + std::to_string(w.dim(2)) + " s" + std::to_string(stride);
}
}  // namespace

bool cuda_detail::conv2d_implicit_gemm_eligible(const Tensor& x) {
  const char* e = std::getenv("NFD_RT_CONV");
  if (e && *e && std::strcmp(e, "implicit") != 0) {
    NFD_CHECK(std::strcmp(e, "im2col") == 0, invalid_argument,
              std::string("NFD_RT_CONV must be 'implicit' or 'im2col', got '") + e + "'");
    return false;
  }
  return (x.dtype == DType::bf16 || x.dtype == DType::f16) && x.dim(0) % kChannelAlign == 0;
}

void cuda_detail::conv2d_implicit_gemm(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias,
                                       int stride, int pad, bool upsample2x, Tensor& out, const Tensor* residual) {
  using namespace cudaops;
  const int up = upsample2x ? 1 : 0;
  const int Cin = int(x.dim(0)), H = int(x.dim(1)), W = int(x.dim(2)), Hi = H << up, Wi = W << up;
  const int Cout = int(w.dim(0)), ks = int(w.dim(2)), Ho = int(out.dim(1)), Wo = int(out.dim(2));
  const int Co8 = conv_layout::padded_channels(Cout);
  const int64_t P_in = int64_t(Hi) * Wi, P = int64_t(Ho) * Wo;
  const bool has_res = residual && residual->defined();
  cudaStream_t s = stream_of(ctx);

  // One stream-ordered allocation (one memory node inside a captured graph), cut at 256-byte boundaries.
  const size_t es = dtype_size(x.dtype);
  const conv_layout::ScratchLayout at(P_in, Cin, P, Cout, ks, int64_t(es));
  Scratch buf(size_t(at.total), s);
  char* base = buf.get<char>();
  Tensor xs{base + at.xs, x.dtype, Device::cuda, {P_in, Cin}};
  Tensor wk{base + at.wk, x.dtype, Device::cuda, {Co8, int64_t(ks) * ks * Cin}};
  Tensor b8{base + at.b8, x.dtype, Device::cuda, {Co8}};
  Tensor prod{base + at.prod, x.dtype, Device::cuda, {P, Co8}};

  const dim3 block(32, 8);
  to_nhwc_kernel<<<dim3(unsigned((P_in + 31) / 32), unsigned((Cin + 31) / 32)), block, 0, s>>>(
      dp(x), dp(xs), Cin, W, int64_t(H) * W, Wi, P_in, up);
  check_launch("conv2d (to NHWC)");
  const int64_t nprep = int64_t(Co8) * ks * ks * Cin + Co8;
  filters_to_krsc_kernel<<<grid_1d(nprep, 256), 256, 0, s>>>(dp(w), dp(bias), bias.defined(), dp(wk), dp(b8), Cout,
                                                               Co8, Cin, ks * ks);
  check_launch("conv2d (filters to KRSC)");

  const cutlass::conv::Conv2dProblemSize pb({1, Hi, Wi, Cin}, {Co8, ks, ks, Cin}, {pad, pad, pad, pad},
                                            {stride, stride}, {1, 1}, {1, Ho, Wo, Co8},
                                            cutlass::conv::Mode::kCrossCorrelation, 1);
  if (x.dtype == DType::bf16) CutlassConv<cutlass::bfloat16_t>::run(pb, xs.data, wk.data, b8.data, prod.data, s);
  else CutlassConv<cutlass::half_t>::run(pb, xs.data, wk.data, b8.data, prod.data, s);

  from_nhwc_add_kernel<<<dim3(unsigned((P + 31) / 32), unsigned((Cout + 31) / 32)), block, 0, s>>>(
      dp(prod), Co8, dp(out), has_res ? dp(*residual) : dp(out), has_res, P, Cout);
  check_launch("conv2d (from NHWC)");
  note_kernel(kernel_key(upsample2x ? "upsample2x_conv2d" : "conv2d", x, w, stride),
              "cutlass implicit-GEMM conv2d fprop NHWC 128x64x32");
}

namespace {
// out = max(out, 0) or min(max(out, 0), 1): the activation after a convolution (TAEHV), a pass of its own
// (unverified on a GPU). fmaxf maps NaN to 0.
__global__ void activation_kernel(cudaops::DPtr y, int64_t total, bool clamp01) {
  NFD_GRID_STRIDE(i, total) {
    const float v = fmaxf(cudaops::ld(y, i), 0.f);
    cudaops::st(y, i, clamp01 ? fminf(v, 1.f) : v);
  }
}
void conv2d_linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
                   Tensor& out, const Tensor* residual);
}  // namespace

void cuda::conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
                  Tensor& out, const Tensor* residual, Activation act) {
  using namespace cudaops;
  conv2d_linear(ctx, x, w, bias, stride, pad, out, residual);
  if (act == Activation::none || out.numel() == 0) return;
  activation_kernel<<<grid_1d(out.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(out), out.numel(),
                                                                         act == Activation::clamp01);
  check_launch("conv2d (activation)");
}

namespace {
void conv2d_linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
                   Tensor& out, const Tensor* residual) {
  using namespace cudaops;
  if (cuda_detail::conv2d_implicit_gemm_eligible(x)) {
    cuda_detail::conv2d_implicit_gemm(ctx, x, w, bias, stride, pad, false, out, residual);
    return;
  }
  const int H = int(x.dim(1)), W = int(x.dim(2)), Cout = int(w.dim(0)), ks = int(w.dim(2));
  const int Wo = int(out.dim(2)), P = int(out.dim(1)) * Wo, K = int(x.dim(0)) * ks * ks;
  const bool has_res = residual && residual->defined();
  if ((x.dtype == DType::bf16 || x.dtype == DType::f16) && K % 8 == 0 && Cout % 8 == 0) {
    // The im2col engine (NFD_RT_CONV=im2col; the tensor-core path until 2026-11-26, verified on the H200):
    // explicit columns [P, K] in scratch, ops::linear's GEMM (bias fused), a tiled transpose adding the residual.
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
    from_nhwc_add_kernel<<<dim3(unsigned((P + 31) / 32), unsigned((Cout + 31) / 32)), dim3(32, 8), 0, s>>>(
        dp(prod_t), Cout, dp(out), has_res ? dp(*residual) : dp(out), has_res, P, Cout);
    check_launch("conv2d (transpose)");
    note_kernel(kernel_key("conv2d", x, w, stride), "im2col + ops::linear GEMM");
    return;
  }
  ConvEpi epi{dp(out), dp(bias), has_res ? dp(*residual) : DPtr{nullptr, DType::f32}, bias.defined(), has_res, P};
  simt_gemm(Cout, P, K, LoadW{dp(w), K}, LoadIm2col{dp(x), H, W, Wo, ks, stride, pad}, epi, stream_of(ctx),
            "conv2d (SIMT implicit GEMM)");
}
}  // namespace

}  // namespace ops
}  // namespace nfd
