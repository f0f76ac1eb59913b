#include "backends/cpu/onednn.h"

#include "core/error.h"
#include "ops/kernel_report.h"

#ifdef NFD_RT_WITH_ONEDNN
#include <omp.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <unordered_map>
#endif

namespace nfd {
namespace cpu {

#ifndef NFD_RT_WITH_ONEDNN

const Bf16Support& bf16_support() {
  static const Bf16Support s{false, "", "this build has no oneDNN (NFD_RT_ONEDNN; pip builds take the "
                                        "onednn-cpu-gomp wheels)"};
  return s;
}
std::string onednn_version() { return ""; }
void matmul(const Matmul&, const void*, const void*, void*, const void*, const void*) {
  fail(ErrorKind::unsupported, "bf16 on the CPU: " + bf16_support().why);
}
bool matmul_unless_reference(const Matmul&, const void*, const void*, void*, const void*, const void*) {
  fail(ErrorKind::unsupported, "bf16 on the CPU: " + bf16_support().why);
}

#else

namespace {

using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// oneDNN sizes its OpenMP team from the calling thread's omp_get_max_threads(). Each call runs on one thread (the
// caller's chunk); the thread's setting is restored afterwards, because PyTorch may share this OpenMP runtime in
// the same process and read it on the same thread.
struct OneThread {
  int before = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(before); }
};

dt to_dt(DType t) { return t == DType::bf16 ? dt::bf16 : dt::f32; }

struct Entry {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, bias, gate;
  size_t scratch = 0;
  bool reference = false;  // oneDNN chose its reference kernel (matmul_unless_reference)
  std::string what;        // the problem, for kernels_used() when a reference kernel runs
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, int, int, int, bool, int>;

const Entry& entry(const Matmul& m) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  const Key key{m.M, m.N, m.K, m.lda, m.ldb, m.ldc, m.b_nk, int(m.a), int(m.b), int(m.c), m.bias, int(m.post)};
  std::lock_guard<std::mutex> lk(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto e = std::make_unique<Entry>();
  e->a = dnnl::memory::desc({m.M, m.K}, to_dt(m.a), dims{m.lda, 1});
  e->b = dnnl::memory::desc({m.K, m.N}, to_dt(m.b), m.b_nk ? dims{1, m.ldb} : dims{m.ldb, 1});
  e->c = dnnl::memory::desc({m.M, m.N}, to_dt(m.c), dims{m.ldc, 1});
  if (m.bias) e->bias = dnnl::memory::desc({1, m.N}, to_dt(m.c), dims{m.N, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-thread scratch of ours: calls may run concurrently
  dnnl::post_ops po;
  if (m.post == Matmul::Post::gelu_tanh) po.append_eltwise(dnnl::algorithm::eltwise_gelu_tanh, 0.f, 0.f);
  if (m.post == Matmul::Post::gelu_erf) po.append_eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
  if (m.post == Matmul::Post::silu) po.append_eltwise(dnnl::algorithm::eltwise_swish, 1.f, 0.f);  // v sigmoid(1 v)
  if (m.post == Matmul::Post::gated) {
    e->gate = dnnl::memory::desc({1, m.N}, to_dt(m.c), dims{m.N, 1});
    po.append_binary(dnnl::algorithm::binary_mul, e->gate);  // gate * (AB + bias)
    po.append_sum(1.f);                                       // + the C it overwrites
  }
  attr.set_post_ops(po);
  OneThread one;  // the kernel's blocking is chosen for the thread count at creation
  dnnl::matmul::primitive_desc pd(engine(), e->a, e->b, e->bias, e->c, attr);
  e->scratch = pd.scratchpad_desc().get_size();
  e->reference = std::string(pd.impl_info_str()).rfind("ref", 0) == 0;  // "ref:any"
  e->what = std::to_string(m.M) + "x" + std::to_string(m.N) + "x" + std::to_string(m.K) + " ld " +
            std::to_string(m.lda) + "/" + std::to_string(m.ldb) + "/" + std::to_string(m.ldc) + " post " +
            std::to_string(int(m.post));
  e->prim = dnnl::matmul(pd);
  return *cache.emplace(key, std::move(e)).first->second;
}

// The calling thread's oneDNN scratchpad, grown as needed (64-byte aligned).
void* thread_scratch(size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf buf;
  if (buf.n < bytes) {
    std::free(buf.p);
    buf.n = (bytes + 63) / 64 * 64;
    buf.p = std::aligned_alloc(64, buf.n);
    if (!buf.p) fail(ErrorKind::out_of_memory, "oneDNN scratchpad of " + std::to_string(bytes) + " bytes");
  }
  return buf.p;
}

}  // namespace

const Bf16Support& bf16_support() {
  static const Bf16Support s = [] {
    Bf16Support r;
    try {
      const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
      const auto has = [&](dnnl::cpu_isa want) { return (unsigned(isa) & unsigned(want)) == unsigned(want); };
      if (has(dnnl::cpu_isa::avx512_core_amx)) {
        r = {true, "AMX-BF16", ""};
      } else if (has(dnnl::cpu_isa::avx512_core_bf16)) {
        r = {true, "AVX512-BF16", ""};
      } else {
        r.why = "this CPU has neither AMX-BF16 nor AVX512-BF16 (oneDNN's instruction set here: " +
                std::string(isa == dnnl::cpu_isa::avx512_core_vnni ? "AVX512-VNNI"
                            : isa == dnnl::cpu_isa::avx512_core    ? "AVX512"
                            : isa == dnnl::cpu_isa::avx2_vnni_2    ? "AVX2-VNNI-2"
                            : isa == dnnl::cpu_isa::avx2_vnni      ? "AVX2-VNNI"
                            : isa == dnnl::cpu_isa::avx2           ? "AVX2"
                                                                   : "older than AVX2") +
                ")";
      }
    } catch (const std::exception& e) {
      r.why = std::string("oneDNN failed to start: ") + e.what();
    }
    return r;
  }();
  return s;
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

namespace {
// Runs the primitive of entry e (e = entry(m)) on this thread.
void execute(const Matmul& m, const Entry& e, const void* A, const void* B, void* C, const void* bias,
             const void* gate) {
  // This thread's memory objects of the primitive, made once; a call only points them at its data. (Making them
  // per call was a third of a 16-row linear's time.)
  struct Bound {
    dnnl::memory a, b, c, bias, gate, scratch;
    std::unordered_map<int, dnnl::memory> args;
  };
  static thread_local dnnl::stream stream(engine());
  static thread_local std::unordered_map<const Entry*, Bound> bound;
  auto [it, fresh] = bound.try_emplace(&e);
  Bound& bd = it->second;
  if (fresh) {
    auto mem = [&](const dnnl::memory::desc& d) { return dnnl::memory(d, engine(), DNNL_MEMORY_NONE); };
    bd.a = mem(e.a), bd.b = mem(e.b), bd.c = mem(e.c);
    bd.args = {{DNNL_ARG_SRC, bd.a}, {DNNL_ARG_WEIGHTS, bd.b}, {DNNL_ARG_DST, bd.c}};
    if (e.scratch) {
      bd.scratch = mem(dnnl::memory::desc({int64_t(e.scratch)}, dt::u8, dims{1}));
      bd.args[DNNL_ARG_SCRATCHPAD] = bd.scratch;
    }
    if (m.bias) bd.args[DNNL_ARG_BIAS] = bd.bias = mem(e.bias);
    if (m.post == Matmul::Post::gated)
      bd.args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = bd.gate = mem(e.gate);
  }
  bd.a.set_data_handle(const_cast<void*>(A));
  bd.b.set_data_handle(const_cast<void*>(B));
  bd.c.set_data_handle(C);
  if (e.scratch) bd.scratch.set_data_handle(thread_scratch(e.scratch));
  if (m.bias) bd.bias.set_data_handle(const_cast<void*>(bias));
  if (m.post == Matmul::Post::gated) bd.gate.set_data_handle(const_cast<void*>(gate));
  // Seen in kernels_used(): a reference kernel is plain loops, far too slow for a frame (tests assert none runs).
  if (e.reference) note_kernel("cpu oneDNN reference kernel " + e.what, "ref:any");
  OneThread one;
  e.prim.execute(stream, bd.args);
}

// matmul and matmul_unless_reference: the dtype check, one primitive lookup, oneDNN's errors as ours. False when
// `unless_reference` and the primitive is oneDNN's reference kernel (then nothing ran).
bool run(const Matmul& m, bool unless_reference, const void* A, const void* B, void* C, const void* bias,
         const void* gate) {
  NFD_CHECK(bf16_support().ok || (m.a == DType::f32 && m.b == DType::f32 && m.c == DType::f32), unsupported,
            "bf16 on the CPU: " + bf16_support().why);
  try {
    const Entry& e = entry(m);
    if (unless_reference && e.reference) return false;
    execute(m, e, A, B, C, bias, gate);
    return true;
  } catch (const dnnl::error& err) {
    fail(ErrorKind::internal, std::string("oneDNN matmul failed: ") + err.what());
  }
}
}  // namespace

void matmul(const Matmul& m, const void* A, const void* B, void* C, const void* bias, const void* gate) {
  run(m, false, A, B, C, bias, gate);
}

bool matmul_unless_reference(const Matmul& m, const void* A, const void* B, void* C, const void* bias,
                             const void* gate) {
  return run(m, true, A, B, C, bias, gate);
}

#endif

}  // namespace cpu
}  // namespace nfd
