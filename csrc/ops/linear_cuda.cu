// y[M,N] = x[M,K] @ w[N,K]^T + bias[N], with the epilogues of ops.h (none / gelu_tanh / gated_residual).
//
// bf16 / fp16 with K % 8 == 0, N % 8 == 0 and 16-byte aligned pointers: CUTLASS 2.x device::Gemm (Sm80 tensor
// ops, runs on sm_80/89/90), fp32 accumulation. The bias is fused as the epilogue's source operand C with a zero
// row stride (C[m][n] = bias[n]); GELU(tanh) is fused through LinearCombinationGeneric<GELU_taylor>.
// gated_residual is NOT fused into the CUTLASS epilogue yet: GEMM + bias into stream-ordered scratch, then one
// small kernel y += gate[n] * t (graph-capturable; costs one extra pass over M x N).
// Everything else (fp32, unaligned shapes, mixed dtypes) takes the SIMT tiled GEMM of simt_gemm.cuh.
// Instantiations: 2 dtypes x 2 epilogue functors = 4 CUTLASS kernels (CI compile time, see docs/cuda-backend.md).
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/epilogue/thread/linear_combination_generic.h>
#include <cutlass/gemm/device/gemm.h>

#include "ops/cuda_common.cuh"
#include "ops/simt_gemm.cuh"

namespace nfd {
namespace ops {
namespace {

template <typename T, bool kGelu>
struct CutlassLinear {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<T>::value;  // 8 elements = 16 bytes
  using EpiNone = cutlass::epilogue::thread::LinearCombination<T, kAlign, float, float>;
  using EpiGelu = cutlass::epilogue::thread::LinearCombinationGeneric<
      cutlass::epilogue::thread::GELU_taylor, T, kAlign, float, float,
      cutlass::epilogue::thread::ScaleType::Default, cutlass::FloatRoundStyle::round_to_nearest, true>;
  using EpilogueOp = typename std::conditional<kGelu, EpiGelu, EpiNone>::type;
  // 64x64 tiles: a 336-token frame with N = 1024 already gives 96 CTAs (128x128 would give 24 on 132 SMs).
  using Gemm = cutlass::gemm::device::Gemm<
      T, cutlass::layout::RowMajor,     // A = x [M, K]
      T, cutlass::layout::ColumnMajor,  // B = w^T [K, N]; w [N, K] row-major is w^T column-major, ldb = K
      T, cutlass::layout::RowMajor,     // C (bias, row stride 0) and D = y [M, N]
      float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, cutlass::gemm::GemmShape<64, 64, 32>,
      cutlass::gemm::GemmShape<32, 32, 32>, cutlass::gemm::GemmShape<16, 8, 16>, EpilogueOp,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 4, kAlign, kAlign>;

  static void run(int M, int N, int K, const void* x, const void* w, const void* bias, void* y, cudaStream_t s) {
    const T* xp = static_cast<const T*>(x);
    const T* wp = static_cast<const T*>(w);
    T* yp = static_cast<T*>(y);
    const T* cp = bias ? static_cast<const T*>(bias) : yp;
    typename Gemm::Arguments args({M, N, K}, {xp, K}, {wp, K}, {cp, 0}, {yp, N},
                                  typename EpilogueOp::Params(1.f, bias ? 1.f : 0.f));
    Gemm gemm;
    cutlass::Status st = gemm.can_implement(args);
    NFD_CHECK(st == cutlass::Status::kSuccess, internal,
              std::string("linear: CUTLASS cannot run this problem: ") + cutlassGetStatusString(st));
    st = gemm.initialize(args, nullptr, s);
    NFD_CHECK(st == cutlass::Status::kSuccess, internal,
              std::string("linear: CUTLASS initialize failed: ") + cutlassGetStatusString(st));
    st = gemm(s);
    cudaops::check_launch("linear (CUTLASS GEMM)");
    NFD_CHECK(st == cutlass::Status::kSuccess, internal,
              std::string("linear: CUTLASS GEMM failed: ") + cutlassGetStatusString(st));
  }
};

template <typename T>
void cutlass_linear(bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                    cudaStream_t s) {
  if (gelu) CutlassLinear<T, true>::run(M, N, K, x, w, bias, y, s);
  else CutlassLinear<T, false>::run(M, N, K, x, w, bias, y, s);
}

// y[m, n] += gate[n] * t[m, n]  (no FMA contraction: same rounding as the CPU's y + g * t)
__global__ void gated_add_kernel(cudaops::DPtr y, cudaops::DPtr t, cudaops::DPtr gate, int N, int64_t total) {
  NFD_GRID_STRIDE(i, total) {
    cudaops::st(y, i, __fadd_rn(cudaops::ld(y, i), __fmul_rn(cudaops::ld(gate, i % N), cudaops::ld(t, i))));
  }
}

struct LoadX {
  cudaops::DPtr x;
  int K;
  __device__ float operator()(int m, int k) const { return cudaops::ld(x, int64_t(m) * K + k); }
};
struct LoadWT {  // B(k, n) = w[n, k]
  cudaops::DPtr w;
  int K;
  __device__ float operator()(int k, int n) const { return cudaops::ld(w, int64_t(n) * K + k); }
};
struct LinearEpi {
  cudaops::DPtr y, bias, gate;
  bool has_bias;
  Epilogue epi;
  int N;
  __device__ void operator()(int m, int n, float acc) const {
    const int64_t i = int64_t(m) * N + n;
    float v = has_bias ? __fadd_rn(acc, cudaops::ld(bias, n)) : acc;
    if (epi == Epilogue::gelu_tanh) v = cudaops::gelu_tanh(v);
    if (epi == Epilogue::gated_residual) v = __fadd_rn(cudaops::ld(y, i), __fmul_rn(cudaops::ld(gate, n), v));
    cudaops::st(y, i, v);
  }
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void cuda::linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                  Epilogue epilogue, const Tensor* gate) {
  using namespace cudaops;
  const char* op = "linear";
  require_cuda_float(op, "x", x);
  require_cuda_float(op, "w", w);
  require_cuda_float(op, "y", y);
  NFD_CHECK(w.rank() == 2, invalid_argument, std::string(op) + ": w must be [N, K], got " + w.describe());
  const int64_t N = w.dim(0), K = w.dim(1);
  NFD_CHECK(x.rank() >= 1 && x.dim(-1) == K, invalid_argument,
            std::string(op) + ": x " + x.describe() + " does not match w " + w.describe());
  const int64_t M = x.numel() / (K ? K : 1);
  require_numel(op, "y", y, M * N);
  NFD_CHECK(y.dim(-1) == N, invalid_argument, std::string(op) + ": y " + y.describe() + " must end in N = " + std::to_string(N));
  if (bias.defined()) {
    require_cuda_float(op, "bias", bias);
    require_numel(op, "bias", bias, N);
  }
  if (epilogue == Epilogue::gated_residual) {
    NFD_CHECK(gate != nullptr, invalid_argument, std::string(op) + ": gated_residual needs a gate");
    require_cuda_float(op, "gate", *gate);
    require_numel(op, "gate", *gate, N);
  }
  NFD_CHECK(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31), invalid_argument,
            std::string(op) + ": dimensions exceed int32");
  if (M == 0 || N == 0) return;
  cudaStream_t s = stream_of(ctx);

  const DType t = y.dtype;
  const bool tensor_op = (t == DType::bf16 || t == DType::f16) && x.dtype == t && w.dtype == t &&
                         (!bias.defined() || (bias.dtype == t && aligned16(bias.data))) && K % 8 == 0 && N % 8 == 0 && K > 0 &&
                         aligned16(x.data) && aligned16(w.data) && aligned16(y.data);
  if (tensor_op) {
    const bool gelu = epilogue == Epilogue::gelu_tanh;
    const void* b = bias.defined() ? bias.data : nullptr;
    if (epilogue == Epilogue::gated_residual) {
      Scratch tmp(size_t(M * N) * dtype_size(t), s);
      if (t == DType::bf16) cutlass_linear<cutlass::bfloat16_t>(false, int(M), int(N), int(K), x.data, w.data, b, tmp.get<void>(), s);
      else cutlass_linear<cutlass::half_t>(false, int(M), int(N), int(K), x.data, w.data, b, tmp.get<void>(), s);
      gated_add_kernel<<<grid_1d(M * N, 256), 256, 0, s>>>(dp(y), DPtr{tmp.get<void>(), t}, dp(*gate), int(N), M * N);
      check_launch("linear (gated residual add)");
    } else if (t == DType::bf16) {
      cutlass_linear<cutlass::bfloat16_t>(gelu, int(M), int(N), int(K), x.data, w.data, b, y.data, s);
    } else {
      cutlass_linear<cutlass::half_t>(gelu, int(M), int(N), int(K), x.data, w.data, b, y.data, s);
    }
    return;
  }
  LinearEpi epi{dp(y), dp(bias), gate ? dp(*gate) : DPtr{nullptr, DType::f32}, bias.defined(), epilogue, int(N)};
  simt_gemm(int(M), int(N), int(K), LoadX{dp(x), int(K)}, LoadWT{dp(w), int(K)}, epi, s, "linear (SIMT GEMM)");
}

}  // namespace ops
}  // namespace nfd
