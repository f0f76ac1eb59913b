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
// cuDNN's convolution as an engine beside it (ops/conv2d_cudnn.h; built with the cuDNN engines, NFD_RT_WITH_CUDNN):
// reading our [C, H, W] tensors as they are (nchw: no transposes, bias and residual fused in its graph), or the
// NHWC buffers of steps 1-2 in place of CUTLASS in step 3 (nhwc; the only cuDNN form of upsample2x_conv2d).
// NFD_RT_CONV = auto (default) | implicit | cudnn | im2col: auto checks CUTLASS and both cuDNN forms against the
// CUDA-core convolution on a seeded input (ops/choice_check_cuda.cuh) and times those that agree, at a shape's
// first call outside a CUDA graph capture (a session makes that call at open: session.cc decodes once there), and
// keeps the fastest, reported in kernels_used() as "<conv key> (choice)"; when none agrees, the former path below
// (or the CUDA-core one) is kept. A shape first met inside a capture runs CUTLASS unchecked. implicit is CUTLASS
// always; cudnn is cuDNN where it takes the problem (else CUTLASS, said why).
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

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "core/switches.h"
#include "ops/choice_check_cuda.cuh"
#include "ops/conv2d_layout.h"
#include "ops/cuda_common.cuh"
#include "ops/cutlass_status.cuh"
#ifdef NFD_RT_WITH_CUDNN
#include "ops/conv2d_cudnn.h"
#endif
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
// The input pixel under tap kk for output pixel p; H, W the (upsampled) image's size, x read at (y >> up, x >> up):
// up = 1 folds upsample2x_conv2d's nearest upsampling in.
struct LoadIm2col {
  cudaops::DPtr x;
  int H, W, Wo, ks, stride, pad, up;
  __device__ float operator()(int kk, int p) const {
    const int ci = kk / (ks * ks), ky = (kk / ks) % ks, kx = kk % ks;
    const int iy = (p / Wo) * stride - pad + ky, ix = (p % Wo) * stride - pad + kx;
    if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
    return cudaops::ld(x, (int64_t(ci) * (H >> up) + (iy >> up)) * (W >> up) + (ix >> up));
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
__global__ void im2col_kernel(LoadIm2col x, cudaops::DPtr col, int K, int64_t total) {
  NFD_GRID_STRIDE(i, total) cudaops::st(col, i, x(int(i % K), int(i / K)));
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

// out[c, p] = prod[p, c] (+ bias[c]) (+ res[c, p]) for c < C, prod's rows ld apart; a 32x32 shared tile. The bias
// only after a cuDNN convolution that could not fuse it (CUTLASS's epilogue adds it).
__global__ void from_nhwc_add_kernel(cudaops::DPtr prod, int ld, cudaops::DPtr out, cudaops::DPtr bias, bool has_bias,
                                     cudaops::DPtr res, bool has_res, int64_t P, int C) {
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
      float v = tile[threadIdx.x][r];
      if (has_bias) v = __fadd_rn(v, cudaops::ld(bias, c));
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

// NFD_RT_CONV, read at each call (tests and benchmarks switch it within a process).
enum class ConvMode { automatic, implicit, cudnn, im2col };
ConvMode conv_mode() {
  const std::string v = switch_value("NFD_RT_CONV", {"auto", "implicit", "cudnn", "im2col"});
  return v == "implicit" ? ConvMode::implicit
         : v == "cudnn"  ? ConvMode::cudnn
         : v == "im2col" ? ConvMode::im2col
                         : ConvMode::automatic;
}

// One tensor-core convolution call: the operands and the problem as the engines see it.
struct ConvCall {
  const Tensor& x;
  const Tensor& w;
  const Tensor& bias;
  const Tensor* residual;  // defined, or null
  Tensor& out;
  int stride, pad, up;  // up: the 2x nearest upsampling of x is folded in (upsample2x_conv2d)
  const char* op;       // "conv2d" or "upsample2x_conv2d"
};

// cutlass and the cuDNN forms are timed; im2col and simt are the paths measured on the H200, kept where no timed
// engine computed right (and run by conv2d_linear where the tensor-core engines do not take a call).
enum class ConvEngine { cutlass, cudnn_nchw, cudnn_nhwc, im2col, simt };
const char* engine_name(ConvEngine e) {
  switch (e) {
    case ConvEngine::cutlass: return "cutlass";
    case ConvEngine::cudnn_nchw: return "cudnn nchw";
    case ConvEngine::cudnn_nhwc: return "cudnn nhwc";
    case ConvEngine::im2col: return "im2col";
    default: return "simt";
  }
}

// The im2col engine (NFD_RT_CONV=im2col; the tensor-core path until 2026-11-26, verified on the H200): explicit
// columns [P, K] in scratch, ops::linear's GEMM (bias fused), a tiled transpose adding the residual. 16-bit, with
// K = Cin k k and Cout multiples of 8.
bool im2col_takes(const Tensor& x, const Tensor& w) {
  return (x.dtype == DType::bf16 || x.dtype == DType::f16) && (x.dim(0) * w.dim(2) * w.dim(2)) % 8 == 0 &&
         w.dim(0) % 8 == 0;
}
LoadIm2col gather_of(const ConvCall& c) {
  return LoadIm2col{cudaops::dp(c.x), int(c.x.dim(1)) << c.up, int(c.x.dim(2)) << c.up, int(c.out.dim(2)),
                    int(c.w.dim(2)), c.stride, c.pad, c.up};
}
void run_im2col(const Context& ctx, const ConvCall& c) {
  using namespace cudaops;
  const int Cout = int(c.w.dim(0)), ks = int(c.w.dim(2)), K = int(c.x.dim(0)) * ks * ks;
  const int P = int(c.out.dim(1) * c.out.dim(2));
  const bool has_res = c.residual != nullptr;
  cudaStream_t s = stream_of(ctx);
  const size_t es = dtype_size(c.x.dtype);
  Scratch col(size_t(P) * K * es, s), prod(size_t(P) * Cout * es, s);
  Tensor col_t{col.get<void>(), c.x.dtype, Device::cuda, {P, K}};
  Tensor prod_t{prod.get<void>(), c.x.dtype, Device::cuda, {P, Cout}};
  Tensor w_t{c.w.data, c.w.dtype, Device::cuda, {Cout, K}};
  im2col_kernel<<<grid_1d(int64_t(P) * K, 256), 256, 0, s>>>(gather_of(c), dp(col_t), K, int64_t(P) * K);
  check_launch("conv2d (im2col)");
  cuda::linear(ctx, col_t, w_t, c.bias, prod_t, Epilogue::none, nullptr);
  from_nhwc_add_kernel<<<dim3(unsigned((P + 31) / 32), unsigned((Cout + 31) / 32)), dim3(32, 8), 0, s>>>(
      dp(prod_t), Cout, dp(c.out), dp(c.out), false, has_res ? dp(*c.residual) : dp(c.out), has_res, P, Cout);
  check_launch("conv2d (transpose)");
  note_kernel(kernel_key(c.op, c.x, c.w, c.stride), "im2col + ops::linear GEMM");
}

// On CUDA cores (simt_gemm.cuh), any dtype and shape: M = Cout, N = output pixels, K = Cin k k, the input gathered
// under each tap on the fly, fp32 sums, one rounding. The reference of the checked choice.
void run_simt(const Context& ctx, const ConvCall& c) {
  using namespace cudaops;
  const int Cout = int(c.w.dim(0)), K = int(c.x.dim(0) * c.w.dim(2) * c.w.dim(2));
  const int P = int(c.out.dim(1) * c.out.dim(2));
  const bool has_res = c.residual != nullptr;
  ConvEpi epi{dp(c.out), dp(c.bias), has_res ? dp(*c.residual) : DPtr{nullptr, DType::f32}, c.bias.defined(), has_res,
              P};
  simt_gemm(Cout, P, K, LoadW{dp(c.w), K}, gather_of(c), epi, stream_of(ctx), "conv2d (SIMT implicit GEMM)");
}

#ifdef NFD_RT_WITH_CUDNN
// The problem of a call as cuDNN sees it: our tensors (nchw), or the NHWC buffers of run_nhwc (nhwc).
cudnn_conv::Problem nchw_problem(const ConvCall& c) {
  return cudnn_conv::Problem{c.x.dtype,       cudnn_conv::Layout::nchw, int(c.x.dim(0)), int(c.x.dim(1)),
                             int(c.x.dim(2)), int(c.w.dim(0)),          int(c.w.dim(2)), c.stride,
                             c.pad,           c.bias.defined(),         c.residual != nullptr};
}
cudnn_conv::Problem nhwc_problem(const ConvCall& c) {
  return cudnn_conv::Problem{c.x.dtype,
                             cudnn_conv::Layout::nhwc,
                             int(c.x.dim(0)),
                             int(c.x.dim(1)) << c.up,
                             int(c.x.dim(2)) << c.up,
                             conv_layout::padded_channels(int(c.w.dim(0))),
                             int(c.w.dim(2)),
                             c.stride,
                             c.pad,
                             true,
                             false};
}
#endif

// Steps 1-3 of the header with CUTLASS or (nhwc) cuDNN for step 3.
void run_nhwc(const Context& ctx, const ConvCall& c, ConvEngine engine) {
  using namespace cudaops;
  const Tensor &x = c.x, &w = c.w, &bias = c.bias;
  const int up = c.up;
  const int Cin = int(x.dim(0)), H = int(x.dim(1)), W = int(x.dim(2)), Hi = H << up, Wi = W << up;
  const int Cout = int(w.dim(0)), ks = int(w.dim(2)), Ho = int(c.out.dim(1)), Wo = int(c.out.dim(2));
  const int Co8 = conv_layout::padded_channels(Cout);
  const int64_t P_in = int64_t(Hi) * Wi, P = int64_t(Ho) * Wo;
  const bool has_res = c.residual != nullptr;
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

  bool add_bias = false;  // a cuDNN plan without the bias: the transpose back adds it
  std::string impl = "cutlass implicit-GEMM conv2d fprop NHWC 128x64x32";
  if (engine == ConvEngine::cudnn_nhwc) {
#ifdef NFD_RT_WITH_CUDNN
    const cudnn_conv::Plan* plan = cudnn_conv::prepare(nhwc_problem(c), nullptr);  // built by the choice: a lookup
    NFD_CHECK(plan, internal, "conv2d: no cuDNN plan for a shape it was chosen for");
    Scratch workspace(cudnn_conv::workspace_bytes(*plan), s);
    cudnn_conv::run(*plan, {xs.data, wk.data, b8.data, nullptr, prod.data}, workspace.get<void>(), s);
    add_bias = cudnn_conv::plain(*plan);
    impl = "cudnn nhwc: fprop between our transposes, " + cudnn_conv::describe(*plan);
#else
    fail(ErrorKind::internal, "conv2d: cuDNN chosen in a build without it");
#endif
  } else {
    const cutlass::conv::Conv2dProblemSize pb({1, Hi, Wi, Cin}, {Co8, ks, ks, Cin}, {c.pad, c.pad, c.pad, c.pad},
                                              {c.stride, c.stride}, {1, 1}, {1, Ho, Wo, Co8},
                                              cutlass::conv::Mode::kCrossCorrelation, 1);
    if (x.dtype == DType::bf16) CutlassConv<cutlass::bfloat16_t>::run(pb, xs.data, wk.data, b8.data, prod.data, s);
    else CutlassConv<cutlass::half_t>::run(pb, xs.data, wk.data, b8.data, prod.data, s);
  }

  from_nhwc_add_kernel<<<dim3(unsigned((P + 31) / 32), unsigned((Cout + 31) / 32)), block, 0, s>>>(
      dp(prod), Co8, dp(c.out), dp(b8), add_bias, has_res ? dp(*c.residual) : dp(c.out), has_res, P, Cout);
  check_launch("conv2d (from NHWC)");
  note_kernel(kernel_key(c.op, x, w, c.stride), impl);
}

#ifdef NFD_RT_WITH_CUDNN
// out[c, p] += bias[c] (+ res[c, p]): after a cuDNN convolution that could not fuse them.
__global__ void bias_residual_kernel(cudaops::DPtr out, cudaops::DPtr bias, bool has_bias, cudaops::DPtr res,
                                     bool has_res, int64_t P, int64_t total) {
  NFD_GRID_STRIDE(i, total) {
    float v = cudaops::ld(out, i);
    if (has_bias) v = __fadd_rn(v, cudaops::ld(bias, int(i / P)));
    if (has_res) v = __fadd_rn(v, cudaops::ld(res, i));
    cudaops::st(out, i, v);
  }
}

// cuDNN on our [C, H, W] tensors as they are.
void run_cudnn_nchw(const Context& ctx, const ConvCall& c) {
  using namespace cudaops;
  const cudnn_conv::Plan* plan = cudnn_conv::prepare(nchw_problem(c), nullptr);  // built by the choice: a lookup
  NFD_CHECK(plan, internal, "conv2d: no cuDNN plan for a shape it was chosen for");
  cudaStream_t s = stream_of(ctx);
  Scratch workspace(cudnn_conv::workspace_bytes(*plan), s);
  const bool has_bias = c.bias.defined(), has_res = c.residual != nullptr;
  cudnn_conv::run(*plan, {c.x.data, c.w.data, has_bias ? c.bias.data : nullptr, has_res ? c.residual->data : nullptr,
                          c.out.data},
                  workspace.get<void>(), s);
  if (cudnn_conv::plain(*plan) && (has_bias || has_res)) {
    const int64_t P = c.out.dim(1) * c.out.dim(2);
    bias_residual_kernel<<<grid_1d(c.out.numel(), 256), 256, 0, s>>>(
        dp(c.out), has_bias ? dp(c.bias) : dp(c.out), has_bias, has_res ? dp(*c.residual) : dp(c.out), has_res, P,
        c.out.numel());
    check_launch("conv2d (bias and residual after cuDNN)");
  }
  note_kernel(kernel_key(c.op, c.x, c.w, c.stride),
              "cudnn nchw: fprop on our tensors, " + cudnn_conv::describe(*plan));
}
#endif

void run_engine(const Context& ctx, const ConvCall& c, ConvEngine e) {
  if (e == ConvEngine::im2col) return run_im2col(ctx, c);
  if (e == ConvEngine::simt) {
    run_simt(ctx, c);
    return note_kernel(kernel_key(c.op, c.x, c.w, c.stride), "simt: implicit GEMM on CUDA cores");
  }
#ifdef NFD_RT_WITH_CUDNN
  if (e == ConvEngine::cudnn_nchw) return run_cudnn_nchw(ctx, c);
#endif
  run_nhwc(ctx, c, e);
}

// Checked choices (ops/choice_check_cuda.cuh) for convolution: each candidate once on a seeded input (and
// residual) of the call's shapes with the call's own filters and bias, against run_simt on the same operands, within
// 2% of the reference's largest magnitude (cudaops::relative_limit). Returns per candidate "" or what it got
// wrong; all "" (and *note says why) when the check is off or cannot run.
template <typename T>
std::vector<std::string> check_typed(const Context& ctx, const ConvCall& c, const std::vector<ConvEngine>& candidates,
                                     std::string* note) {
  using cudaops::on_scratch;
  using cudaops::Scratch;
  cudaStream_t s = cudaops::stream_of(ctx);
  const bool has_res = c.residual != nullptr;
  Scratch xm(c.x.bytes(), s), rm(has_res ? c.residual->bytes() : 0, s), refm(c.out.bytes(), s),
      gotm(c.out.bytes(), s);
  const Tensor cx = on_scratch(c.x, xm), cres = has_res ? on_scratch(*c.residual, rm) : Tensor{};
  Tensor ref = on_scratch(c.out, refm), got = on_scratch(c.out, gotm);
  cudaops::fill_uniform(cx.ptr<T>(), cx.numel(), 4, 1.f, s);
  if (has_res) cudaops::fill_uniform(cres.ptr<T>(), cres.numel(), 5, 1.f, s);
  run_simt(ctx, ConvCall{cx, c.w, c.bias, has_res ? &cres : nullptr, ref, c.stride, c.pad, c.up, c.op});
  const ConvCall checked{cx, c.w, c.bias, has_res ? &cres : nullptr, got, c.stride, c.pad, c.up, c.op};
  std::vector<std::string> wrong = cudaops::check_each<T>(
      candidates.size(), got, ref, cudaops::relative_limit(ref.ptr<T>(), ref.numel(), s), s,
      [&](size_t i) { run_engine(ctx, checked, candidates[i]); },
      [&](size_t i) { return std::string(engine_name(candidates[i])); });
  *note = "each checked against the CUDA-core convolution; ";
  return wrong;
}
std::vector<std::string> check_candidates(const Context& ctx, const ConvCall& c,
                                          const std::vector<ConvEngine>& candidates, std::string* note) {
  if (!cudaops::choice_check_on()) return std::vector<std::string>(candidates.size());
  try {
    return c.x.dtype == DType::bf16 ? check_typed<__nv_bfloat16>(ctx, c, candidates, note)
                                    : check_typed<__half>(ctx, c, candidates, note);
  } catch (const std::exception& e) {
    cudaops::after_candidate_failure(cudaops::stream_of(ctx), e);
    *note = "check not run (" + std::string(e.what()).substr(0, 120) + "); ";
    return std::vector<std::string>(candidates.size());
  }
}

// The engine kept per shape (NFD_RT_CONV=auto: the fastest that computed right), for the process.
using ConvKey = std::tuple<int, int, int, int, int, int, int, int, int, bool, bool>;
ConvKey key_of(const ConvCall& c) {
  return ConvKey{int(c.x.dtype), c.up, int(c.x.dim(0)), int(c.x.dim(1)), int(c.x.dim(2)), int(c.w.dim(0)),
                 int(c.w.dim(2)), c.stride, c.pad, c.bias.defined(), c.residual != nullptr};
}
std::mutex g_choice_mu;
std::map<ConvKey, ConvEngine>& choices() {
  static std::map<ConvKey, ConvEngine> m;
  return m;
}

// The engine of a call. Building cuDNN's plans, the check and the timing synchronise the stream, so a shape first
// met inside a capture runs CUTLASS without a choice being kept (the next uncaptured call chooses).
ConvEngine choose(const Context& ctx, const ConvCall& c, ConvMode mode) {
  if (mode == ConvMode::implicit) return ConvEngine::cutlass;
  // The input's size in the key: the same channels at two resolutions are two choices.
  const std::string choice_key = kernel_key(c.op, c.x, c.w, c.stride) + " at " + std::to_string(c.x.dim(1)) + "x" +
                                 std::to_string(c.x.dim(2)) + " (choice)";
  const ConvKey key = key_of(c);
  auto measured = [&](ConvEngine* e) {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    auto it = choices().find(key);
    if (it != choices().end()) *e = it->second;
    return it != choices().end();
  };
  ConvEngine known = ConvEngine::cutlass;
  std::unique_lock<std::recursive_mutex> measuring;
  if (mode == ConvMode::automatic) {
    if (measured(&known)) return known;
    // Not measured yet: one measurement at a time, and another thread may have stored this one meanwhile.
    measuring = std::unique_lock<std::recursive_mutex>(cudaops::measure_mutex());
    if (measured(&known)) return known;
  }
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaops::check(cudaStreamIsCapturing(cudaops::stream_of(ctx), &cap), "cudaStreamIsCapturing");
  const bool capturing = cap != cudaStreamCaptureStatusNone;
  std::vector<ConvEngine> candidates;
  std::string report;
#ifdef NFD_RT_WITH_CUDNN
  // The cuDNN forms whose plans cuDNN builds (nchw first: no transposes of ours). prepare() keeps its plans; inside
  // a capture only plans built before are taken (a lookup).
  auto consider = [&](ConvEngine e, const cudnn_conv::Problem& p) {
    std::string why;
    if (capturing ? cudnn_conv::prepared(p) : cudnn_conv::prepare(p, &why) != nullptr) candidates.push_back(e);
    else if (!capturing) report += std::string(engine_name(e)) + ": no plan (" + why.substr(0, 160) + "), ";
  };
  if (!c.up) consider(ConvEngine::cudnn_nchw, nchw_problem(c));
  consider(ConvEngine::cudnn_nhwc, nhwc_problem(c));
  if (mode == ConvMode::cudnn) {  // forced: the first form cuDNN takes, else CUTLASS with the reason
    if (!candidates.empty()) return candidates.front();
    note_kernel(choice_key, report + "-> cutlass (NFD_RT_CONV=cudnn)");
    return ConvEngine::cutlass;
  }
#else
  if (mode == ConvMode::cudnn) {
    note_kernel(choice_key, "cutlass (NFD_RT_CONV=cudnn: built without cuDNN)");
    return ConvEngine::cutlass;
  }
#endif
  if (capturing) {
    note_kernel(choice_key, "cutlass, not chosen (first met inside a CUDA graph capture)");
    return ConvEngine::cutlass;
  }
  candidates.push_back(ConvEngine::cutlass);
  std::string check_note;
  const std::vector<std::string> wrong = check_candidates(ctx, c, candidates, &check_note);
  std::vector<ConvEngine> right;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (wrong[i].empty()) right.push_back(candidates[i]);
    else report += std::string(engine_name(candidates[i])) + ": " + wrong[i].substr(0, 160) + ", ";
  }
  // Where no timed engine computed right: the path measured on the H200.
  ConvEngine best = im2col_takes(c.x, c.w) ? ConvEngine::im2col : ConvEngine::simt;
  if (right.empty()) report += "none agreed with the CUDA-core convolution: the measured path, ";
  if (right.size() == 1) best = right.front();
  if (right.size() > 1) {
    float best_ms = -1.f;
    char buf[64];
    for (ConvEngine e : right) {
      float ms = -1.f;
      try {
        ms = cudaops::time_ms(cudaops::stream_of(ctx), [&] { run_engine(ctx, c, e); });
      } catch (const std::exception& err) {  // a failed launch: left out of the choice, reported
        cudaops::after_candidate_failure(cudaops::stream_of(ctx), err, "convolution choice: " + choice_key,
                                         engine_name(e));
        report += std::string(engine_name(e)) + ": failed (" + std::string(err.what()).substr(0, 120) + "), ";
        continue;
      }
      std::snprintf(buf, sizeof buf, " %.4f ms, ", ms);
      report += engine_name(e) + std::string(buf);
      if (best_ms < 0.f || ms < best_ms) best = e, best_ms = ms;
    }
    report = "measured: " + report;
  }
  report += check_note + "-> " + engine_name(best);
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    choices()[key] = best;
  }
  note_kernel(choice_key, report);
  return best;
}
}  // namespace

bool cuda_detail::conv2d_implicit_gemm_eligible(const Tensor& x) {
  if (conv_mode() == ConvMode::im2col) return false;
  return (x.dtype == DType::bf16 || x.dtype == DType::f16) && x.dim(0) % kChannelAlign == 0;
}

void cuda_detail::conv2d_implicit_gemm(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias,
                                       int stride, int pad, bool upsample2x, Tensor& out, const Tensor* residual) {
  const Tensor* res = residual && residual->defined() ? residual : nullptr;
  const ConvCall c{x, w, bias, res, out, stride, pad, upsample2x ? 1 : 0, upsample2x ? "upsample2x_conv2d" : "conv2d"};
  run_engine(ctx, c, choose(ctx, c, conv_mode()));
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
  const ConvCall c{x, w, bias, residual && residual->defined() ? residual : nullptr, out, stride, pad, 0, "conv2d"};
  if (im2col_takes(x, w)) return run_im2col(ctx, c);  // Cin % 8 != 0 here, or NFD_RT_CONV=im2col
  run_simt(ctx, c);
}
}  // namespace

}  // namespace ops
}  // namespace nfd
