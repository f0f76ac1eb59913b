// cuBLASLt GEMMs for the CUDA ops::linear (interface and contract in ops/cuda_gemm.h).
//
// Built against cublasLt.h (the nvidia-cublas wheel or a toolkit that has it) but not linked: the library is
// opened with dlopen at first use, so nfd_rt loads and runs (on CUTLASS) where nvidia-cublas is not installed.
// Search order: $NFD_RT_CUBLASLT_LIB; the nvidia-cublas wheel beside this binary (site-packages/nvidia/cu13/lib
// or nvidia/cublas/lib, seen from site-packages/nfd_rt/ and site-packages/nfd_rt/lib/); the loader's path.
//
// Row-major y[M,N] = x[M,K] w[N,K]^T is column-major y^T[N,M] = w^T... as cuBLASLt sees it: A = w (column-major
// [K,N], ld K, TRANSA = T), B = x (column-major [K,M], ld K, TRANSB = N), D = y (column-major [N,M], ld N);
// the bias is per row of D (length N), as CUBLASLT_EPILOGUE_BIAS / GELU_BIAS expect.
#include <cublasLt.h>
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/choice_check_cuda.cuh"
#include "ops/cuda_common.cuh"
#include "ops/cuda_gemm.h"
#include "ops/vendor_library.h"

namespace nfd {
namespace ops {
namespace cuda_detail {
namespace {

// The entry points we use, resolved from the loaded library.
struct Lt {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  decltype(&cublasLtGetStatusString) status_string;
  cublasLtHandle_t handle = nullptr;
  std::string status;
  bool ok = false;
};

Lt& lt() {
  static Lt l;
  static std::once_flag once;
  std::call_once(once, [] {
    // nvidia-cublas 13.x (nvidia/cu13/lib) or its older layout
    const vendor::Opened o = vendor::open_library(
        "NFD_RT_CUBLASLT_LIB", {"nvidia/cu13/lib/libcublasLt.so.13", "nvidia/cublas/lib/libcublasLt.so.13"},
        "libcublasLt.so.13", "cublasLtCreate", RTLD_NOW | RTLD_LOCAL);
    void* h = o.handle;
    if (!h) {
      l.status = "cuBLASLt not loaded (pip install nvidia-cublas, the `cuda` extra); tried " + o.tried;
      return;
    }
    l.status = "cuBLASLt from " + o.path;
    bool all = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      all = all && fn != nullptr;
    };
    sym(l.create, "cublasLtCreate");
    sym(l.desc_create, "cublasLtMatmulDescCreate");
    sym(l.desc_destroy, "cublasLtMatmulDescDestroy");
    sym(l.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(l.layout_create, "cublasLtMatrixLayoutCreate");
    sym(l.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(l.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(l.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(l.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(l.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(l.matmul, "cublasLtMatmul");
    sym(l.status_string, "cublasLtGetStatusString");
    if (!all) {
      l.status += ": missing symbols";
      return;
    }
    const cublasStatus_t st = l.create(&l.handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
      l.status += std::string(": cublasLtCreate failed: ") + l.status_string(st);
      return;
    }
    l.ok = true;  // the handle lives until the process ends (destroying it at exit races the CUDA teardown)
  });
  return l;
}

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(ErrorKind::internal, std::string("cuBLASLt ") + what + ": " + lt().status_string(st));
}

constexpr size_t kMaxWorkspace = size_t(32) << 20;  // NVIDIA's recommendation for Hopper
// Algorithms asked of the heuristic per shape; cublaslt_tune times them all (the first is often not the fastest
// for the small-M GEMMs of one frame, where split-K or a narrower tile wins).
constexpr int kCandidates = 8;

// Per shape: the layouts and the heuristic's algorithm (descriptors are immutable once made; the matmul
// descriptor, which holds the bias pointer, is made per call).
struct Plan {
  bool ok = false;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};  // the one run: the heuristic's first, or the fastest once tuned
  size_t workspace = 0;
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;  // in the heuristic's order
  bool tuned = false;
  std::string note;
};

std::string describe(const cublasLtMatmulHeuristicResult_t& r, int index, int count, const char* how) {
  return "cuBLASLt heuristic algorithm #" + std::to_string(index) + " of " + std::to_string(count) + " (" + how +
         "), workspace " + std::to_string(r.workspaceSize) + " B, waves " + std::to_string(r.wavesCount);
}
using PlanKey = std::tuple<int, bool, bool, int, int, int>;  // dtype, gelu, bias, M, N, K

cublasLtMatmulDesc_t make_desc(bool gelu, const void* bias) {
  Lt& l = lt();
  cublasLtMatmulDesc_t desc = nullptr;
  check_lt(l.desc_create(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(l.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
  check_lt(l.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
  const cublasLtEpilogue_t epi = bias ? (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                      : (gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  check_lt(l.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "set EPILOGUE");
  if (bias) check_lt(l.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "set BIAS_POINTER");
  return desc;
}

// Guards the plan map and each plan's chosen algorithm (algo, workspace, tuned, note): cublaslt_tune rewrites them
// while sessions on other threads may run the same shape. Layouts and candidates do not change once made.
std::mutex g_plan_mu;

const Plan& plan_for(DType t, bool gelu, const void* bias, int M, int N, int K) {
  static std::map<PlanKey, Plan> plans;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  const PlanKey key{int(t), gelu, bias != nullptr, M, N, K};
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  Plan& p = plans[key];
  Lt& l = lt();
  const cudaDataType_t dt = t == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
  check_lt(l.layout_create(&p.a, dt, K, N, K), "MatrixLayoutCreate (w)");
  check_lt(l.layout_create(&p.b, dt, K, M, K), "MatrixLayoutCreate (x)");
  check_lt(l.layout_create(&p.d, dt, N, M, N), "MatrixLayoutCreate (y)");
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(l.pref_create(&pref), "MatmulPreferenceCreate");
  check_lt(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kMaxWorkspace, sizeof kMaxWorkspace),
           "set MAX_WORKSPACE_BYTES");
  const uint32_t align = 16;  // our tensors: 16-byte aligned (checked by the caller)
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    check_lt(l.pref_set(pref, attr, &align, sizeof align), "set MIN_ALIGNMENT");
  cublasLtMatmulDesc_t desc = make_desc(gelu, bias);
  cublasLtMatmulHeuristicResult_t res[kCandidates] = {};
  int found = 0;
  const cublasStatus_t st = l.heuristic(l.handle, desc, p.a, p.b, p.d, p.d, pref, kCandidates, res, &found);
  l.desc_destroy(desc);
  l.pref_destroy(pref);
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) p.candidates.push_back(res[i]);
  if (!p.candidates.empty()) {
    p.ok = true;
    p.algo = p.candidates[0].algo;
    p.workspace = p.candidates[0].workspaceSize;
    p.note = describe(p.candidates[0], 0, int(p.candidates.size()), "the heuristic's first, not timed");
  } else {
    p.note = std::string("cuBLASLt: no algorithm (") + l.status_string(st) + ")";
  }
  return p;
}

void run(const Plan& p, const cublasLtMatmulAlgo_t& algo, size_t workspace, bool gelu, const void* x,
         const void* w, const void* bias, void* y, cudaStream_t s) {
  Lt& l = lt();
  cublasLtMatmulDesc_t desc = make_desc(gelu, bias);
  cudaops::Scratch ws(workspace, s);
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t st =
      l.matmul(l.handle, desc, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &algo, ws.get<void>(), workspace, s);
  l.desc_destroy(desc);
  check_lt(st, "Matmul");
  cudaops::check_launch("linear (cuBLASLt)");
}

}  // namespace

bool cublaslt_available() { return lt().ok; }
std::string cublaslt_status() { return lt().status; }

bool cublaslt_gemm(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                   cudaStream_t s, std::string* algo_note) {
  if (!cublaslt_available() || (t != DType::bf16 && t != DType::f16)) return false;
  const Plan& p = plan_for(t, gelu, bias, M, N, K);
  cublasLtMatmulAlgo_t algo;
  size_t workspace;
  {
    std::lock_guard<std::mutex> lock(g_plan_mu);
    if (algo_note) *algo_note = p.note;
    algo = p.algo;
    workspace = p.workspace;
  }
  if (!p.ok) return false;
  run(p, algo, workspace, gelu, x, w, bias, y, s);
  return true;
}

bool cublaslt_plan(DType t, bool gelu, int M, int N, int K, const void* bias) {
  return cublaslt_available() && (t == DType::bf16 || t == DType::f16) && plan_for(t, gelu, bias, M, N, K).ok;
}

float cublaslt_tune(DType t, bool gelu, int M, int N, int K, const void* x, const void* w, const void* bias, void* y,
                    cudaStream_t s, std::string* algo_note, const std::function<std::string(void* y)>& check) {
  if (!cublaslt_available() || (t != DType::bf16 && t != DType::f16)) return -1.f;
  Plan& p = const_cast<Plan&>(plan_for(t, gelu, bias, M, N, K));
  std::string planned_note;
  {
    std::lock_guard<std::mutex> lock(g_plan_mu);
    planned_note = p.note;
  }
  if (!p.ok) {
    if (algo_note) *algo_note = planned_note;
    return -1.f;
  }
  float best_ms = -1.f;
  int best = -1;
  std::string failures;
  for (size_t i = 0; i < p.candidates.size(); ++i) {
    const auto& c = p.candidates[i];
    try {  // a candidate that fails to launch (workspace, a split-K it cannot run) or computes wrong is left out
      if (check) {  // y (and the workspace) start as NaN: an algorithm that writes nothing cannot pass on the last's
        cudaops::run_poisoned(y, size_t(M) * N * dtype_size(t), s,
                              [&] { run(p, c.algo, c.workspaceSize, gelu, x, w, bias, y, s); });
        const std::string wrong = check(y);
        if (!wrong.empty()) {
          failures += " #" + std::to_string(i) + " " + wrong.substr(0, 100);
          continue;
        }
      }
      const float ms = cudaops::time_ms(s, [&] { run(p, c.algo, c.workspaceSize, gelu, x, w, bias, y, s); });
      if (best < 0 || ms < best_ms) best_ms = ms, best = int(i);
    } catch (const std::exception& e) {
      cudaops::after_candidate_failure(s, e, "linear_prepare", "cuBLASLt algorithm #" + std::to_string(i));
      failures += " #" + std::to_string(i) + " failed (" + std::string(e.what()).substr(0, 80) + ")";
    }
  }
  if (best < 0 && !failures.empty()) {  // none kept: say why each was left out
    if (algo_note) *algo_note = planned_note + "; left out:" + failures;
    return -1.f;
  }
  std::lock_guard<std::mutex> lock(g_plan_mu);
  if (best >= 0) {
    p.algo = p.candidates[size_t(best)].algo;
    p.workspace = p.candidates[size_t(best)].workspaceSize;
    p.tuned = true;
    char ms[32];
    std::snprintf(ms, sizeof ms, "%.4f ms", best_ms);
    p.note = describe(p.candidates[size_t(best)], best, int(p.candidates.size()),
                      (std::string("the fastest timed at open, ") + ms).c_str()) + failures;
  }
  if (algo_note) *algo_note = p.note;
  return best_ms;
}

}  // namespace cuda_detail
}  // namespace ops
}  // namespace nfd
