// y[M,N] = x[M,K] @ w[N,K]^T + bias[N], with the epilogues of ops.h (none / gelu_tanh / gated_residual / gelu_erf;
// the tensor-core path applies the exact GELU in a pass of its own after the GEMM, unverified on a GPU).
//
// bf16 / fp16 with K % 8 == 0, N % 8 == 0 and 16-byte aligned pointers run on tensor cores through one of two
// GEMM engines (ops/cuda_gemm.h), chosen per shape:
//  * CUTLASS 2.x device::Gemm (Sm80 tensor ops, runs on sm_80/89/90), 64x64x32 tiles, fp32 accumulation. The
//    bias is fused as the epilogue's source operand C with a zero row stride (C[m][n] = bias[n]); GELU(tanh)
//    through LinearCombinationGeneric<GELU_taylor>. 2 dtypes x 2 epilogue functors = 4 instantiations
//    (CI compile time, see docs/cuda-backend.md).
//  * cuBLASLt (ops/linear_cuda_cublaslt.cu, when built with its header and the library loads at run time):
//    heuristic algorithm per shape, bias / GELU+bias epilogues.
// The choice: NFD_RT_GEMM=cutlass|cublaslt forces one; otherwise (auto) the engine linear_prepare measured
// faster for the shape (the session times both on the GPU at open), CUTLASS for shapes never prepared.
// nfd::kernels_used() records the engine per shape.
// gated_residual is not fused into either epilogue: GEMM + bias into stream-ordered scratch, then one small
// kernel y += gate[n] * t (graph-capturable; one extra pass over M x N).
// Everything else (fp32, unaligned shapes) takes the SIMT tiled GEMM of simt_gemm.cuh. The contract (one dtype
// for x, w, bias, gate and y; x 2-D) is checked in ops/linear.cc.
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/epilogue/thread/linear_combination_generic.h>
#include <cutlass/gemm/device/gemm.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>

#include "ops/choice_check_cuda.cuh"
#include "ops/cuda_common.cuh"
#include "ops/cutlass_status.cuh"
#include "ops/cuda_gemm.h"
#include "ops/kernel_report.h"
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
    constexpr size_t smem = sizeof(typename Gemm::GemmKernel::SharedStorage);
    cudaops::check_cutlass(gemm.can_implement(args), "linear: CUTLASS cannot run this problem", s, smem);
    cudaops::check_cutlass(gemm.initialize(args, nullptr, s), "linear: CUTLASS initialize failed", s, smem);
    cudaops::check_cutlass(gemm(s), "linear: CUTLASS GEMM failed", s, smem);
    cudaops::check_launch("linear (CUTLASS GEMM)");
  }
};

template <typename T>
void cutlass_linear(bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                    cudaStream_t s) {
  if (gelu) CutlassLinear<T, true>::run(M, N, K, x, w, bias, y, s);
  else CutlassLinear<T, false>::run(M, N, K, x, w, bias, y, s);
}

// --- engine choice per shape -------------------------------------------------------------------------------
enum class Engine { cutlass, cublaslt };
enum class Mode { automatic, cutlass, cublaslt };

Mode requested_mode() {
  const char* e = std::getenv("NFD_RT_GEMM");
  if (!e || !*e || std::strcmp(e, "auto") == 0) return Mode::automatic;
  if (std::strcmp(e, "cutlass") == 0) return Mode::cutlass;
  if (std::strcmp(e, "cublaslt") == 0) return Mode::cublaslt;
  fail(ErrorKind::invalid_argument, std::string("NFD_RT_GEMM must be 'auto', 'cutlass' or 'cublaslt', got '") + e + "'");
}

using ShapeKey = std::tuple<int, bool, bool, int, int, int>;  // dtype, gelu, bias, M, N, K
std::mutex g_choice_mu;
std::map<ShapeKey, Engine>& choices() {
  static std::map<ShapeKey, Engine> m;
  return m;
}

std::string shape_name(DType t, bool gelu, bool bias, int M, int N, int K) {
  return std::string("linear ") + dtype_name(t) + " " + std::to_string(M) + "x" + std::to_string(N) + "x" +
         std::to_string(K) + (gelu ? " gelu" : "") + (bias ? " bias" : "");
}

// The tensor-core GEMM (bias, GELU fused) on the engine chosen for the shape.
void gemm16(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* b, void* y,
            cudaStream_t s) {
  const Mode mode = requested_mode();
  Engine engine = Engine::cutlass;
  if (mode == Mode::cublaslt) {
    engine = Engine::cublaslt;
  } else if (mode == Mode::automatic) {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    auto it = choices().find(ShapeKey{int(t), gelu, b != nullptr, M, N, K});
    if (it != choices().end()) engine = it->second;
  }
  const std::string key = shape_name(t, gelu, b != nullptr, M, N, K);
#ifdef NFD_RT_WITH_CUBLASLT
  if (engine == Engine::cublaslt) {
    std::string note;
    if (cuda_detail::cublaslt_gemm(t, gelu, M, N, K, x, w, b, y, s, &note)) {
      note_kernel(key, "cublaslt (" + note + ")");
      return;
    }
    note_kernel(key, "cutlass 64x64x32 (cuBLASLt requested, unavailable: " +
                         (cuda_detail::cublaslt_available() ? note : cuda_detail::cublaslt_status()) + ")");
  } else {
    note_kernel(key, "cutlass 64x64x32");
  }
#else
  note_kernel(key, engine == Engine::cublaslt ? "cutlass 64x64x32 (cuBLASLt requested; built without it)"
                                              : "cutlass 64x64x32");
#endif
  cuda_detail::cutlass_gemm(t, gelu, M, N, K, x, w, b, y, s);
}

// y[i] = gelu_erf(y[i]) or silu(y[i]): the exact GELU or the SiLU after a tensor-core GEMM (its engines fuse only
// the tanh form; the SiLU pass is unverified on a GPU).
__global__ void gelu_erf_kernel(cudaops::DPtr y, int64_t total) {
  NFD_GRID_STRIDE(i, total) { cudaops::st(y, i, cudaops::gelu_erf(cudaops::ld(y, i))); }
}
__global__ void silu_kernel(cudaops::DPtr y, int64_t total) {
  NFD_GRID_STRIDE(i, total) { cudaops::st(y, i, cudaops::silu(cudaops::ld(y, i))); }
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
// Not inlined: simt_gemm unrolls its epilogue 16 times per thread, and 16 inlined copies of this body (three
// dtype-switched loads, three transcendental activations) made cicc take 7 minutes per architecture on this
// file alone (the CI build's longest step); called, it compiles in seconds, and the call is once per output.
struct LinearEpi {
  cudaops::DPtr y, bias, gate;
  bool has_bias;
  Epilogue epi;
  int N;
  __device__ __noinline__ void operator()(int m, int n, float acc) const {
    const int64_t i = int64_t(m) * N + n;
    float v = has_bias ? __fadd_rn(acc, cudaops::ld(bias, n)) : acc;
    if (epi == Epilogue::gelu_tanh) v = cudaops::gelu_tanh(v);
    if (epi == Epilogue::gelu_erf) v = cudaops::gelu_erf(v);
    if (epi == Epilogue::silu) v = cudaops::silu(v);
    if (epi == Epilogue::gated_residual) v = __fadd_rn(cudaops::ld(y, i), __fmul_rn(cudaops::ld(gate, n), v));
    cudaops::st(y, i, v);
  }
};

}  // namespace

void cuda_detail::cutlass_gemm(DType t, bool gelu, int M, int N, int K, const void* x, const void* w,
                               const void* bias, void* y, cudaStream_t s) {
  if (t == DType::bf16) cutlass_linear<cutlass::bfloat16_t>(gelu, M, N, K, x, w, bias, y, s);
  else cutlass_linear<cutlass::half_t>(gelu, M, N, K, x, w, bias, y, s);
}

namespace {
struct LinearShape {
  int64_t M, N, K;
  bool tensor_op;  // the 16-bit tensor-core path applies
};

// The problem size and the path it takes (the contract, ops/linear.cc, has checked the shapes and made every
// tensor share y's dtype). The CUDA kernels' own limit: dimensions below 2^31.
LinearShape linear_shape(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  const int64_t M = x.dim(0), N = w.dim(0), K = w.dim(1);
  NFD_CHECK(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31), unsupported,
            "ops::linear: the CUDA GEMMs take dimensions below 2^31, got x " + x.describe() + " and w " +
                w.describe());
  const DType t = y.dtype;
  const bool tensor_op = (t == DType::bf16 || t == DType::f16) && (!bias.defined() || cudaops::aligned16(bias.data)) &&
                         K % 8 == 0 && N % 8 == 0 && K > 0 && cudaops::aligned16(x.data) &&
                         cudaops::aligned16(w.data) && cudaops::aligned16(y.data);
  return LinearShape{M, N, K, tensor_op};
}

}  // namespace

void cuda::linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                  Epilogue epilogue, const Tensor* gate) {
  using namespace cudaops;
  const LinearShape sh = linear_shape(x, w, bias, y);
  const int64_t M = sh.M, N = sh.N, K = sh.K;
  if (M == 0 || N == 0) return;
  cudaStream_t s = stream_of(ctx);
  const DType t = y.dtype;
  if (sh.tensor_op) {
    const bool gelu = epilogue == Epilogue::gelu_tanh;
    const void* b = bias.defined() ? bias.data : nullptr;
    if (epilogue == Epilogue::gated_residual) {
      Scratch tmp(size_t(M * N) * dtype_size(t), s);
      gemm16(t, false, int(M), int(N), int(K), x.data, w.data, b, tmp.get<void>(), s);
      gated_add_kernel<<<grid_1d(M * N, 256), 256, 0, s>>>(dp(y), DPtr{tmp.get<void>(), t}, dp(*gate), int(N), M * N);
      check_launch("linear (gated residual add)");
    } else {
      gemm16(t, gelu, int(M), int(N), int(K), x.data, w.data, b, y.data, s);
      if (epilogue == Epilogue::gelu_erf) {
        gelu_erf_kernel<<<grid_1d(M * N, 256), 256, 0, s>>>(dp(y), M * N);
        check_launch("linear (exact GELU)");
      }
      if (epilogue == Epilogue::silu) {
        silu_kernel<<<grid_1d(M * N, 256), 256, 0, s>>>(dp(y), M * N);
        check_launch("linear (SiLU)");
      }
    }
    return;
  }
  LinearEpi epi{dp(y), dp(bias), gate ? dp(*gate) : DPtr{nullptr, DType::f32}, bias.defined(), epilogue, int(N)};
  simt_gemm(int(M), int(N), int(K), LoadX{dp(x), int(K)}, LoadWT{dp(w), int(K)}, epi, s, "linear (SIMT GEMM)");
}

// Times CUTLASS and cuBLASLt on this shape (the GEMM + bias (+ GELU) part; a gated residual's add is the same
// for both) into a scratch output, and records the faster for ops::linear. Reads x, w, bias; writes nothing
// the caller owns. Needs an uncaptured stream (it synchronises).
void cuda::linear_prepare(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                          Epilogue epilogue) {
  using namespace cudaops;
  const LinearShape sh = linear_shape(x, w, bias, y);  // the GEMM part is timed
  if (!sh.tensor_op || sh.M == 0 || sh.N == 0 || requested_mode() == Mode::cutlass) return;
#ifdef NFD_RT_WITH_CUBLASLT
  cudaStream_t s = stream_of(ctx);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
  if (cap != cudaStreamCaptureStatusNone) return;  // cannot time inside a capture: CUTLASS stays the default
  if (requested_mode() == Mode::cublaslt) {  // forced: nothing to time, but load it and plan the shape now
    cuda_detail::cublaslt_plan(y.dtype, epilogue == Epilogue::gelu_tanh, int(sh.M), int(sh.N), int(sh.K),
                               bias.defined() ? bias.data : nullptr);
    return;
  }
  if (!cuda_detail::cublaslt_available()) return;
  const DType t = y.dtype;
  const bool gelu = epilogue == Epilogue::gelu_tanh;
  const void* b = bias.defined() ? bias.data : nullptr;
  const int M = int(sh.M), N = int(sh.N), K = int(sh.K);
  const ShapeKey key{int(t), gelu, b != nullptr, M, N, K};
  std::lock_guard<std::recursive_mutex> measuring(measure_mutex());
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    if (choices().count(key)) return;  // measured before (another session, another layer)
  }
  void* out = nullptr;
  check(cudaMalloc(&out, size_t(M) * N * dtype_size(t)), "cudaMalloc (linear_prepare)");
  std::string note;
  float t_lt = -1.f, t_cutlass = -1.f;
  try {
    // Checked choices (ops/choice_check_cuda.cuh): both engines run on a seeded x with the layer's own w and bias,
    // and each cuBLASLt algorithm must agree with CUTLASS (it ran on the H200) within 2% of the largest value
    // before it is timed (a split-K algorithm on a wrong workspace would not); with none agreeing, CUTLASS.
    const bool checked = choice_check_on();
    Scratch seeded_x(checked ? size_t(M) * K * dtype_size(t) : 0, s),
        ref(checked ? size_t(M) * N * dtype_size(t) : 0, s);
    const void* xin = x.data;
    std::function<std::string(void*)> agrees;
    if (checked) {
      xin = seeded_x.get<void>();
      if (t == DType::bf16) fill_uniform(seeded_x.get<__nv_bfloat16>(), int64_t(M) * K, 6, 1.f, s);
      else fill_uniform(seeded_x.get<__half>(), int64_t(M) * K, 6, 1.f, s);
      cuda_detail::cutlass_gemm(t, gelu, M, N, K, xin, w.data, b, ref.get<void>(), s);
      const int64_t n = int64_t(M) * N;
      const float tol = t == DType::bf16 ? relative_limit(ref.get<__nv_bfloat16>(), n, s)
                                         : relative_limit(ref.get<__half>(), n, s);
      agrees = [&, n, tol](void* got) {
        return t == DType::bf16
                   ? verdict(static_cast<__nv_bfloat16*>(got), ref.get<__nv_bfloat16>(), n, tol, "cublaslt", s)
                   : verdict(static_cast<__half*>(got), ref.get<__half>(), n, tol, "cublaslt", s);
      };
    }
    t_lt = cuda_detail::cublaslt_tune(t, gelu, M, N, K, xin, w.data, b, out, s, &note, agrees);
    t_cutlass = cudaops::time_ms(s, [&] { cuda_detail::cutlass_gemm(t, gelu, M, N, K, xin, w.data, b, out, s); });
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize (linear_prepare)");
  } catch (...) {
    cudaStreamSynchronize(s);
    cudaFree(out);
    throw;
  }
  cudaFree(out);
  const Engine e = t_lt > 0.f && t_lt < t_cutlass ? Engine::cublaslt : Engine::cutlass;
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    choices()[key] = e;
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "measured at open: cutlass %.4f ms, cublaslt %.4f ms -> %s", t_cutlass, t_lt,
                e == Engine::cublaslt ? "cublaslt" : "cutlass");
  if (t_lt < 0.f)  // no algorithm launched and agreed (the note after says why)
    std::snprintf(buf, sizeof buf, "measured at open: cutlass %.4f ms, cublaslt none -> cutlass", t_cutlass);
  note_kernel(shape_name(t, gelu, b != nullptr, M, N, K) + " (choice)", std::string(buf) + "; " + note);
#endif
}

}  // namespace ops
}  // namespace nfd
