// ops::linear on the CPU (contract checked in ops/linear.cc): fp32: per column block one product (oneDNN for large
// blocks, else OpenBLAS sgemm; sgemv for one row), then the epilogue (bias, GELU-tanh, exact GELU, SiLU or gated
// residual) over rows; bf16: oneDNN matmuls with the epilogue fused.
#include "backends/cpu/blas.h"
#include "backends/cpu/onednn.h"
#include "core/switches.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/cpu_common.h"
#include "ops/kernel_report.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

NFD_CPU_INLINE float gelu_tanh(float v) {
  // tanh(u) = 1 - 2 / (exp(2u) + 1): one exp instead of tanh; exp_approx's clamp still gives tanh = +-1.
  const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);  // sqrt(2 / pi) (v + 0.044715 v^3)
  return 0.5f * v * (2.f - 2.f / (exp_approx(2.f * u) + 1.f));
}

// One row of the epilogue on columns [0, cols): v = product (+ bias); GELU-tanh, exact GELU or SiLU; then store or,
// for the gated residual, o += gate * v. Vectorised per target (the GELU's exp is most of a small linear's time
// otherwise).
// Each case is its own loop: a pointer tested inside the loop becomes masked loads, and a masked load from a
// null pointer costs a microcode assist per vector on AMD CPUs (a 3x slower linear).
NFD_CPU_MULTIVERSION
static void epilogue_row(const float* prod, const float* bias, const float* gate, float* o, int64_t cols,
                         Epilogue epilogue) {
  const bool gelu = epilogue == Epilogue::gelu_tanh, erf = epilogue == Epilogue::gelu_erf;
  const bool sil = epilogue == Epilogue::silu;
  if (gate && bias) {
    for (int64_t c = 0; c < cols; ++c) o[c] += gate[c] * (prod[c] + bias[c]);
  } else if (gate) {
    for (int64_t c = 0; c < cols; ++c) o[c] += gate[c] * prod[c];
  } else if (gelu && bias) {
    for (int64_t c = 0; c < cols; ++c) o[c] = gelu_tanh(prod[c] + bias[c]);
  } else if (gelu) {
    for (int64_t c = 0; c < cols; ++c) o[c] = gelu_tanh(prod[c]);
  } else if (erf && bias) {
    for (int64_t c = 0; c < cols; ++c) o[c] = gelu_erf(prod[c] + bias[c]);
  } else if (erf) {
    for (int64_t c = 0; c < cols; ++c) o[c] = gelu_erf(prod[c]);
  } else if (sil && bias) {
    for (int64_t c = 0; c < cols; ++c) o[c] = silu(prod[c] + bias[c]);
  } else if (sil) {
    for (int64_t c = 0; c < cols; ++c) o[c] = silu(prod[c]);
  } else if (bias) {
    for (int64_t c = 0; c < cols; ++c) o[c] = prod[c] + bias[c];
  } else if (o != prod) {
    for (int64_t c = 0; c < cols; ++c) o[c] = prod[c];
  }
}

// bf16: one oneDNN matmul per block of output columns (fixed by the shape, as in fp32), products accumulated in
// fp32, the epilogue fused (oneDNN post-ops: GELU-tanh, exact GELU, SiLU, or gate * (product + bias) + y), y rounded
// once; where oneDNN would run such a block on its reference kernel, the bare product and our own epilogue. A
// block has at least kBf16MinColumns columns: a oneDNN call costs a few microseconds more than an sgemm call, and
// tiny's 16-row linears cut into 8-column blocks ran 2-4x slower than in fp32.
constexpr int64_t kBf16MinColumns = 64;
static void linear_bf16(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                        Epilogue epilogue, const Tensor* gate) {
  const int64_t N = w.dim(0), K = w.dim(1), M = x.dim(0);
  const bf16_t* b = bias.defined() ? bias.ptr<bf16_t>() : nullptr;
  const bf16_t* g = epilogue == Epilogue::gated_residual ? gate->ptr<bf16_t>() : nullptr;
  bf16_t* out = y.ptr<bf16_t>();
  using Post = ::nfd::cpu::Matmul::Post;
  const Post post = g                                 ? Post::gated
                    : epilogue == Epilogue::gelu_tanh ? Post::gelu_tanh
                    : epilogue == Epilogue::gelu_erf  ? Post::gelu_erf
                    : epilogue == Epilogue::silu      ? Post::silu
                                                      : Post::none;
  // The epilogue in oneDNN's post-ops (auto), or always as the bare product and our epilogue below (ours: that
  // path's tests, and a comparison).
  const bool fused = switch_value("NFD_RT_CPU_EPILOGUE", {"auto", "ours"}) == "auto";
  ::nfd::cpu::parallel_for(ctx.threads, N, [&](int64_t n0, int64_t n1) {
    const int64_t cols = n1 - n0;
    // oneDNN runs its brgemm kernels only on a dense destination (ldc = the block's width); on a block of y's
    // columns (ldc = N) it takes its older gemm kernel, 15-20% slower at a frame's shapes (docs/cpu-backend.md).
    // So a block narrower than y is computed into dense scratch (holding y's block first for the gated residual,
    // whose sum post-op reads it) and copied into y.
    ::nfd::cpu::Matmul mm;
    mm.M = M, mm.N = cols, mm.K = K, mm.lda = K, mm.ldb = K, mm.ldc = cols, mm.b_nk = true;
    mm.bias = b != nullptr, mm.post = post;
    const bf16_t* wb = w.ptr<bf16_t>() + n0 * K;
    if (post == Post::none || fused) {
      const bool dense = cols == N;
      bf16_t* dst = dense ? out + n0 : reinterpret_cast<bf16_t*>(scratch(size_t(M * cols + 1) / 2));
      auto copy_rows = [&](const bf16_t* from, int64_t from_ld, bf16_t* to, int64_t to_ld) {
        for (int64_t r = 0; r < M; ++r)
          std::memcpy(to + r * to_ld, from + r * from_ld, size_t(cols) * sizeof(bf16_t));
      };
      if (!dense && g) copy_rows(out + n0, N, dst, cols);
      const bf16_t* bb = b ? b + n0 : nullptr;
      const bool ran = post == Post::none
                           ? (::nfd::cpu::matmul(mm, x.ptr<bf16_t>(), wb, dst, bb), true)
                           : ::nfd::cpu::matmul_unless_reference(mm, x.ptr<bf16_t>(), wb, dst, bb,
                                                                 g ? g + n0 : nullptr);
      if (ran) {
        if (!dense) copy_rows(dst, cols, out + n0, N);
        return;
      }
    }
    // oneDNN has only its reference kernel for this epilogue here (or NFD_RT_CPU_EPILOGUE=ours): the bare product
    // into fp32 scratch on a fast kernel, then the fp32 epilogue (bias and gate widened, y widened for the gated
    // residual), rounded once.
    note_kernel("linear cpu bf16 " + std::to_string(M) + "x" + std::to_string(cols) + "x" + std::to_string(K) +
                    (g ? " gated" : " epilogue"),
                fused ? "oneDNN bare product + our epilogue (oneDNN's fused epilogue here is its reference kernel)"
                      : "oneDNN bare product + our epilogue (NFD_RT_CPU_EPILOGUE=ours)");
    ::nfd::cpu::Matmul bare = mm;
    bare.bias = false, bare.post = Post::none, bare.c = DType::f32;
    float* prod = scratch(size_t(M * cols), 0);
    ::nfd::cpu::matmul(bare, x.ptr<bf16_t>(), wb, prod);
    float* bias_f = b ? scratch(size_t(cols), 1) : nullptr;
    float* gate_f = g ? scratch(size_t(cols), 2) : nullptr;
    float* row = scratch(size_t(cols), 3);
    for (int64_t c = 0; c < cols; ++c) {
      if (bias_f) bias_f[c] = to_float(b[n0 + c]);
      if (gate_f) gate_f[c] = to_float(g[n0 + c]);
    }
    for (int64_t r = 0; r < M; ++r) {
      bf16_t* o = out + r * N + n0;
      if (gate_f)
        for (int64_t c = 0; c < cols; ++c) row[c] = to_float(o[c]);
      epilogue_row(prod + r * cols, bias_f, gate_f, row, cols, epilogue);
      for (int64_t c = 0; c < cols; ++c) o[c] = from_float<bf16_t>(row[c]);
    }
  }, std::max<int64_t>(kBf16MinColumns, ::nfd::cpu::grain_for(M * K)));
}

// fp32 blocks that go to oneDNN (auto): at least this many rows and multiply-adds (a oneDNN call's fixed cost
// dominates below; measured in docs/cpu-backend.md).
constexpr int64_t kOneDnnF32MinRows = 32, kOneDnnF32MinWork = int64_t(1) << 19;

// prod[M, cols] (dense) = x[M, K] w_block[cols, K]^T in fp32, as oneDNN sees it.
static ::nfd::cpu::Matmul dense_f32_product(int64_t M, int64_t cols, int64_t K) {
  ::nfd::cpu::Matmul mm;
  mm.M = M, mm.N = cols, mm.K = K, mm.lda = K, mm.ldb = K, mm.ldc = cols, mm.b_nk = true;
  mm.a = mm.b = mm.c = DType::f32;
  return mm;
}

void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue,
            const Tensor* gate) {
  if (cpu_bf16("linear", y)) return linear_bf16(ctx, x, w, bias, y, epilogue, gate);
  const int64_t N = w.dim(0), K = w.dim(1), M = x.dim(0);
  const bool gated = epilogue == Epilogue::gated_residual;

  // Threads split the output columns; each runs a single-threaded product on its block and the epilogue while the
  // block is in cache. (OpenBLAS' own threads would spin against our pool on a few cores.) The product engine is
  // fixed by the block's shape (so the bits do not depend on the thread count): oneDNN's fp32 brgemm into dense
  // scratch for blocks of at least kOneDnnF32MinRows rows and kOneDnnF32MinWork multiply-adds, OpenBLAS otherwise
  // (docs/cpu-backend.md: oneDNN 1.2-1.3x OpenBLAS on a frame's large blocks here, 0.5-0.7x on tiny's 16-row ones);
  // NFD_RT_CPU_GEMM=openblas|onednn takes one engine for every block.
  ::nfd::cpu::set_blas_threads(1);
  const std::string engine = switch_value("NFD_RT_CPU_GEMM", {"auto", "openblas", "onednn"});
  const bool always_onednn = engine == "onednn", auto_onednn = engine == "auto" && ::nfd::cpu::has_onednn();
  NFD_CHECK(!always_onednn || ::nfd::cpu::has_onednn(), unsupported,
            "NFD_RT_CPU_GEMM=onednn: this build has no oneDNN");
  const float* b = bias.defined() ? bias.ptr<float>() : nullptr;
  const float* g = gated ? gate->ptr<float>() : nullptr;
  float* out = y.ptr<float>();
  ::nfd::cpu::parallel_for(ctx.threads, N, [&](int64_t n0, int64_t n1) {
    const int64_t cols = n1 - n0;
    const float* wb = w.ptr<float>() + n0 * K;
    const bool onednn =
        always_onednn || (auto_onednn && M >= kOneDnnF32MinRows && M * cols * K >= kOneDnnF32MinWork);
    // oneDNN writes a dense block (its brgemm kernels take no other destination); the gated residual accumulates
    // into y, so its product goes to scratch first too.
    float* prod = onednn || gated ? scratch(size_t(M * cols)) : out + n0;
    const int64_t ldp = onednn || gated ? cols : N;
    // OpenBLAS where oneDNN is not asked for, or would run its reference kernel.
    if (!onednn || !::nfd::cpu::matmul_unless_reference(dense_f32_product(M, cols, K), x.ptr<float>(), wb, prod)) {
      if (M == 1)  // a matrix-vector product: sgemv reads the weights in place, sgemm would first repack them
        NFD_CBLAS(sgemv)(CblasRowMajor, CblasNoTrans, int(cols), int(K), 1.f, wb, int(K), x.ptr<float>(), 1, 0.f,
                          prod, 1);
      else
        NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(cols), int(K), 1.f, x.ptr<float>(),
                          int(K), wb, int(K), 0.f, prod, int(ldp));
    }
    for (int64_t r = 0; r < M; ++r)
      epilogue_row(prod + r * ldp, b ? b + n0 : nullptr, g ? g + n0 : nullptr, out + r * N + n0, cols, epilogue);
  }, ::nfd::cpu::grain_for(M * K));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
