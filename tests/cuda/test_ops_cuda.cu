// Standalone GPU op harness: every nfd::ops::cuda:: op against naive host loops (double precision) in this file.
// Inputs are random normals rounded to bf16 (exactly representable in f16 and f32 too), so all dtypes see the
// same values and one double reference serves every dtype. Outputs are poisoned with NaN bytes before each run.
// Error metric: ||out - ref||_2 / ||ref||_2 (NaN fails). Tolerances per output dtype:
//   f32 1e-5 (5e-5 for K >= 1024 GEMMs/attention: fp32 sums of thousands of terms), f16 2e-3, bf16 1e-2.
// Exact checks: noise (bits of host Philox + Box-Muller), to_uint8 / from_uint8, patchify, upsample, copy.
// Prints "N passed, N failed"; exit code 1 on any failure, 2 when no CUDA device is present.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/device_cuda.h"
#include "backends/device.h"
#include "core/error.h"
#include "core/philox.h"
#include "ops/attention_math.h"
#include "ops/attention_mma.h"
#include "ops/cuda_gemm.h"
#include "ops/kernel_report.h"
#include "ops/ops_impl.h"

using namespace nfd;
namespace cu = nfd::ops::cuda;

static int g_pass = 0, g_fail = 0;
static std::mt19937 g_rng(1234);

#define CK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);       \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

static const DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16};
static const char* tname(DType t) { return t == DType::f32 ? "f32" : t == DType::f16 ? "f16" : t == DType::bf16 ? "bf16" : "u8"; }
static double tol_of(DType t, bool long_sum = false) {
  return t == DType::f32 ? (long_sum ? 5e-5 : 1e-5) : t == DType::f16 ? 2e-3 : 1e-2;
}
static size_t esize(DType t) { return t == DType::f32 || t == DType::i32 ? 4 : t == DType::u8 ? 1 : 2; }

static std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = tile::round_bf16(d(g_rng));
  return v;
}

// A device tensor owning its memory.
struct DevT {
  Tensor t;
  explicit DevT(std::vector<int64_t> shape, DType dt) {
    t.shape = shape;
    t.dtype = dt;
    t.device = Device::cuda;
    CK(cudaMalloc(&t.data, std::max<size_t>(t.numel() * esize(dt), 16)));
    poison();
  }
  DevT(std::vector<int64_t> shape, DType dt, const std::vector<float>& v) : DevT(shape, dt) { upload(v); }
  ~DevT() { cudaFree(t.data); }
  DevT(const DevT&) = delete;
  void poison() { CK(cudaMemset(t.data, 0xFF, t.numel() * esize(t.dtype))); }  // NaN in f32/f16/bf16
  void upload(const std::vector<float>& v) {
    std::vector<uint8_t> raw(v.size() * esize(t.dtype));
    for (size_t i = 0; i < v.size(); ++i) {
      if (t.dtype == DType::f32) std::memcpy(&raw[i * 4], &v[i], 4);
      else if (t.dtype == DType::bf16) { uint16_t b = tile::bf16_bits_rn(v[i]); std::memcpy(&raw[i * 2], &b, 2); }
      else if (t.dtype == DType::f16) { __half h = __float2half_rn(v[i]); std::memcpy(&raw[i * 2], &h, 2); }
      else raw[i] = uint8_t(v[i]);
    }
    CK(cudaMemcpy(t.data, raw.data(), raw.size(), cudaMemcpyHostToDevice));
  }
  std::vector<float> download() const {
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> raw(t.numel() * esize(t.dtype));
    CK(cudaMemcpy(raw.data(), t.data, raw.size(), cudaMemcpyDeviceToHost));
    std::vector<float> v(t.numel());
    for (size_t i = 0; i < v.size(); ++i) {
      if (t.dtype == DType::f32) std::memcpy(&v[i], &raw[i * 4], 4);
      else if (t.dtype == DType::bf16) { uint16_t b; std::memcpy(&b, &raw[i * 2], 2); v[i] = tile::bf16_bits_to_float(b); }
      else if (t.dtype == DType::f16) { __half h; std::memcpy(&h, &raw[i * 2], 2); v[i] = __half2float(h); }
      else v[i] = raw[i];
    }
    return v;
  }
};

static void report(const std::string& name, bool ok, const std::string& detail) {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %-58s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
}

static void check_close(const std::string& name, const std::vector<float>& got, const std::vector<double>& ref,
                        double tol) {
  double num = 0, den = 0;
  bool nan = got.size() != ref.size();
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) nan = true;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  double rel = std::sqrt(num / (den > 0 ? den : 1));
  char buf[128];
  std::snprintf(buf, sizeof buf, "rel_l2=%.3e tol=%.0e%s", rel, tol, nan ? " NON-FINITE/size" : "");
  report(name, !nan && rel <= tol, buf);
}

static void check_exact(const std::string& name, const std::vector<float>& got, const std::vector<float>& ref) {
  size_t bad = got.size() == ref.size() ? 0 : 1;
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i)
    if (std::memcmp(&got[i], &ref[i], 4) != 0) ++bad;
  report(name, bad == 0, "mismatches=" + std::to_string(bad) + "/" + std::to_string(ref.size()));
}

template <class F>
static void expect_error(const std::string& name, F f) {
  try {
    f();
    report(name, false, "no nfd::Error thrown");
  } catch (const nfd::Error& e) {
    report(name, true, std::string("nfd::Error: ") + e.what());
  }
}

struct DevState {
  FrameState* d = nullptr;
  FrameState host{};  // the host copy (Context::host_state) a host-sized vendor kernel reads
  DevState() { CK(cudaMalloc(&d, sizeof(FrameState))); }
  ~DevState() { cudaFree(d); }
  void set(int frame, int write_slot, const std::vector<int>& vis) {
    FrameState h{};
    h.frame_index = frame;
    h.write_slot = write_slot;
    h.num_visible = int(vis.size());
    for (size_t i = 0; i < vis.size(); ++i) h.visible_slots[i] = vis[i];
    CK(cudaMemcpy(d, &h, sizeof h, cudaMemcpyHostToDevice));
    host = h;
  }
};

static Context make_ctx(cudaStream_t s, const FrameState* st, const FrameState* host = nullptr) {
  Context c;
  c.device = Device::cuda;
  c.stream = s;
  c.state = st;
  c.host_state = host;
  return c;
}

static void set_env(const char* name, const char* value) {
  if (value) setenv(name, value, 1);
  else unsetenv(name);
}
static bool flashinfer_built() {
#ifdef NFD_RT_WITH_FLASHINFER
  return true;
#else
  return false;
#endif
}
// cuBLASLt built in and its library loaded (else the cuBLASLt cases are skipped, and say so once).
static bool cublaslt_usable() {
#ifdef NFD_RT_WITH_CUBLASLT
  static bool said = false;
  if (!said) std::printf("  %s\n", ops::cuda_detail::cublaslt_status().c_str());
  said = true;
  return ops::cuda_detail::cublaslt_available();
#else
  return false;
#endif
}

// ------------------------------------------------------------------------------------------------------------
static double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

static void test_linear(const Context& ctx) {
  struct Shape { int M, K, N; };
  const Shape shapes[] = {{16, 128, 128}, {77, 1024, 1024}, {336, 4096, 1024}, {336, 1024, 4096}, {1, 1024, 6144},
                          {200, 128, 4096}, {33, 36, 20} /* unaligned: SIMT path for every dtype */};
  for (const Shape& s : shapes) {
    auto x = randn(size_t(s.M) * s.K), w = randn(size_t(s.N) * s.K, 1.f / std::sqrt(float(s.K)));
    auto b = randn(s.N, 0.1f), gate = randn(s.N), y0 = randn(size_t(s.M) * s.N);
    std::vector<double> acc(size_t(s.M) * s.N);
    for (int m = 0; m < s.M; ++m)
      for (int n = 0; n < s.N; ++n) {
        double a = 0;
        const float* xr = &x[size_t(m) * s.K];
        const float* wr = &w[size_t(n) * s.K];
        for (int k = 0; k < s.K; ++k) a += double(xr[k]) * wr[k];
        acc[size_t(m) * s.N + n] = a + b[n];
      }
    for (DType t : kFloatTypes)
    for (const char* engine : {"cutlass", "cublaslt"}) {
      // The 16-bit GEMM engines (NFD_RT_GEMM); f32 and unaligned shapes take the SIMT GEMM whatever is set.
      if (std::strcmp(engine, "cublaslt") == 0 && (t == DType::f32 || !cublaslt_usable())) continue;
      set_env("NFD_RT_GEMM", engine);
      DevT dx({s.M, s.K}, t, x), dw({s.N, s.K}, t, w), db({s.N}, t, b), dg({s.N}, t, gate);
      for (int e = 0; e < 3; ++e) {
        DevT dy({s.M, s.N}, t);
        std::vector<double> ref(acc.size());
        std::vector<float> y0q = y0;
        if (e == 2) {  // y holds the residual stream; round it to t as the device sees it
          dy.upload(y0);
          y0q = DevT({s.M, s.N}, t, y0).download();
        }
        for (size_t i = 0; i < ref.size(); ++i) {
          const int n = int(i % s.N);
          ref[i] = e == 0 ? acc[i] : e == 1 ? gelu_ref(acc[i]) : y0q[i] + double(gate[n]) * acc[i];
        }
        const ops::Epilogue ep = e == 0 ? ops::Epilogue::none : e == 1 ? ops::Epilogue::gelu_tanh : ops::Epilogue::gated_residual;
        cu::linear(ctx, dx.t, dw.t, db.t, dy.t, ep, e == 2 ? &dg.t : nullptr);
        char name[112];
        std::snprintf(name, sizeof name, "linear %s%s%s M=%d K=%d N=%d %s", tname(t), t == DType::f32 ? "" : " ",
                      t == DType::f32 ? "" : engine, s.M, s.K, s.N,
                      e == 0 ? "bias" : e == 1 ? "bias+gelu" : "gated_residual");
        check_close(name, dy.download(), ref, tol_of(t, s.K >= 1024));
      }
      if (t == DType::f32) break;  // one engine-independent pass
    }
  }
  set_env("NFD_RT_GEMM", nullptr);
  // linear_prepare times both engines on a shape and the op then runs the faster: the choice is recorded.
  if (cublaslt_usable()) {
    const int M = 336, K = 1024, N = 3072;
    DevT dx({M, K}, DType::bf16, randn(size_t(M) * K)), dw({N, K}, DType::bf16, randn(size_t(N) * K, 0.03f)),
        db({N}, DType::bf16, randn(N)), dy({M, N}, DType::bf16);
    clear_kernels_used();
    cu::linear_prepare(ctx, dx.t, dw.t, db.t, dy.t, ops::Epilogue::none);
    cu::linear(ctx, dx.t, dw.t, db.t, dy.t, ops::Epilogue::none, nullptr);
    std::string choice, ran;
    for (auto& kv : kernels_used()) {
      std::printf("  %s: %s\n", kv.first.c_str(), kv.second.c_str());
      if (kv.first.find("(choice)") != std::string::npos) choice = kv.second;
      else ran = kv.second;
    }
    const bool lt_won = choice.find("-> cublaslt") != std::string::npos;
    report("linear_prepare measured both engines; linear ran the faster", !choice.empty() &&
           (lt_won ? ran.rfind("cublaslt", 0) == 0 : ran.rfind("cutlass", 0) == 0), choice);
  }
  // No bias.
  DevT dx({8, 64}, DType::bf16, randn(8 * 64)), dw({16, 64}, DType::bf16, randn(16 * 64)), dy({8, 16}, DType::bf16);
  auto xv = dx.download(), wv = dw.download();
  std::vector<double> ref(8 * 16);
  for (int m = 0; m < 8; ++m)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 64; ++k) ref[m * 16 + n] += double(xv[m * 64 + k]) * wv[n * 64 + k];
  cu::linear(ctx, dx.t, dw.t, Tensor{}, dy.t, ops::Epilogue::none, nullptr);
  check_close("linear bf16 no bias", dy.download(), ref, 1e-2);
  expect_error("linear rejects mismatched K", [&] {
    DevT bad({16, 32}, DType::bf16);
    cu::linear(ctx, dx.t, bad.t, Tensor{}, dy.t, ops::Epilogue::none, nullptr);
  });
}

// ------------------------------------------------------------------------------------------------------------
// Token-major caches [slots, N, H, hd]; slots outside [0, slots) are skipped (the CUDA op masks their keys).
static std::vector<double> attention_ref(const std::vector<float>& q, const std::vector<float>& k,
                                         const std::vector<float>& v, int H, int N, int hd, int slots,
                                         const std::vector<int>& vis_all) {
  std::vector<int> vis;
  for (int s : vis_all)
    if (s >= 0 && s < slots) vis.push_back(s);
  std::vector<double> out(size_t(N) * H * hd);
  std::vector<double> sc(vis.size() * N);
  for (int h = 0; h < H; ++h)
    for (int n = 0; n < N; ++n) {
      double mx = -1e300;
      for (size_t j = 0; j < vis.size() * N; ++j) {
        const size_t base = size_t(tile::mma::kv_offset(vis[j / N], int(j % N), N, H, h, hd));
        double d = 0;
        for (int c = 0; c < hd; ++c) d += double(q[(size_t(h) * N + n) * hd + c]) * k[base + c];
        sc[j] = d / std::sqrt(double(hd));
        mx = std::max(mx, sc[j]);
      }
      double l = 0;
      for (auto& s : sc) l += (s = std::exp(s - mx));
      for (int c = 0; c < hd; ++c) {
        double o = 0;
        for (size_t j = 0; j < vis.size() * N; ++j)
          o += sc[j] * v[size_t(tile::mma::kv_offset(vis[j / N], int(j % N), N, H, h, hd)) + c];
        out[size_t(n) * H * hd + h * hd + c] = o / l;
      }
    }
  return out;
}

// The attention implementations behind the op (NFD_RT_ATTENTION), with split overrides for ours.
struct AttnVariant {
  const char* impl;    // NFD_RT_ATTENTION
  const char* splits;  // NFD_RT_ATTENTION_SPLITS (nullptr: the op's choice)
};

static void test_attention(cudaStream_t stream, DevState& st) {
  struct Case { int H, N, hd, slots; std::vector<int> vis; };
  const Case cases[] = {
      {4, 37, 32, 6, {5}},                    // first frame: only the frame's own slot
      {4, 37, 64, 6, {0, 3, 4, 5}},           // sink + window + current
      {2, 37, 128, 6, {0, 4, 1, 2, 5}},       // rolling window wrapped around the ring (slot order 4,1,2)
      {2, 336, 64, 12, {0, 7, 8, 9, 10, 1, 2, 3, 4, 5, 11}},  // real frame size, many splits
      {2, 37, 64, 4, {0, 1, 2, 3}},           // visible = the cache's prefix (FlashInfer runs on these)
      {2, 24, 64, 4, {1, 9, 0}},              // slot 9 outside the cache: masked by the CUDA op
      {1, 5, 64, 3, {2, 0}},                  // fewer queries and keys than one tile
  };
  std::vector<AttnVariant> variants = {{"ours", nullptr}, {"ours", "1"}, {"ours", "3"}, {"simt", nullptr}};
  if (flashinfer_built()) variants.push_back({"flashinfer", nullptr});
  for (const Case& c : cases) {
    auto q = randn(size_t(c.H) * c.N * c.hd), k = randn(size_t(c.slots) * c.N * c.H * c.hd),
         v = randn(size_t(c.slots) * c.N * c.H * c.hd);
    auto ref = attention_ref(q, k, v, c.H, c.N, c.hd, c.slots, c.vis);
    st.set(3, c.vis.back(), c.vis);
    Context ctx = make_ctx(stream, st.d, &st.host);
    for (DType t : kFloatTypes) {
      DevT dq({c.H, c.N, c.hd}, t, q), dk({c.slots, c.N, c.H, c.hd}, t, k), dv({c.slots, c.N, c.H, c.hd}, t, v);
      for (const AttnVariant& var : variants) {
        if (t == DType::f32 && (std::strcmp(var.impl, "ours") != 0 || var.splits)) continue;  // f32: one path
        set_env("NFD_RT_ATTENTION", var.impl);
        set_env("NFD_RT_ATTENTION_SPLITS", var.splits);
        DevT out({c.N, int64_t(c.H) * c.hd}, t);
        clear_kernels_used();
        cu::attention(ctx, dq.t, dk.t, dv.t, out.t);
        char name[128];
        std::snprintf(name, sizeof name, "attention %s %s%s%s H=%d N=%d hd=%d visible=%zu", tname(t), var.impl,
                      var.splits ? " splits=" : "", var.splits ? var.splits : "", c.H, c.N, c.hd, c.vis.size());
        check_close(name, out.download(), ref, tol_of(t, true));
        // The kernel that ran, as the op reports it: tensor cores for 16-bit "ours", CUDA cores for f32/simt.
        auto used = kernels_used();
        const std::string ran = used.empty() ? "" : used.begin()->second;
        const bool want_mma = t != DType::f32 && std::strcmp(var.impl, "simt") != 0;
        const bool ok = std::strcmp(var.impl, "flashinfer") == 0 ? !ran.empty()
                        : want_mma ? ran.rfind("ours: mma", 0) == 0 : ran.rfind("simt", 0) == 0;
        report(std::string(name) + " ran", ok, ran);
      }
    }
  }
  set_env("NFD_RT_ATTENTION", nullptr);
  set_env("NFD_RT_ATTENTION_SPLITS", nullptr);
  // nfd-310m's full cache (33 slots of 336 tokens, the ring wrapped), 2 of its 16 heads: the kernel's real shape.
  {
    const int H = 2, N = 336, hd = 64, slots = 33;
    std::vector<int> vis = {0, 1};
    for (int s = 12; s < slots; ++s) vis.push_back(s);
    for (int s = 2; s < 12; ++s) vis.push_back(s);
    auto q = randn(size_t(H) * N * hd), k = randn(size_t(slots) * N * H * hd), v = randn(size_t(slots) * N * H * hd);
    auto ref = attention_ref(q, k, v, H, N, hd, slots, vis);
    st.set(40, 11, vis);
    Context ctx = make_ctx(stream, st.d, &st.host);
    DevT dq({H, N, hd}, DType::bf16, q), dk({slots, N, H, hd}, DType::bf16, k), dv({slots, N, H, hd}, DType::bf16, v);
    DevT out({N, H * hd}, DType::bf16);
    cu::attention(ctx, dq.t, dk.t, dv.t, out.t);
    check_close("attention bf16 ours nfd-310m full cache (33 slots, 2 heads)", out.download(), ref, 1e-2);
    if (flashinfer_built()) {
      set_env("NFD_RT_ATTENTION", "flashinfer");
      out.poison();
      cu::attention(ctx, dq.t, dk.t, dv.t, out.t);
      check_close("attention bf16 flashinfer nfd-310m full cache (33 slots, 2 heads)", out.download(), ref, 1e-2);
      set_env("NFD_RT_ATTENTION", nullptr);
    }
  }
  // CUDA graph: capture once, change the device FrameState, replay: the kernel must follow the new slot list
  // (fewer and more visible slots than at capture: the grid was sized for the full cache).
  for (DType t : {DType::bf16, DType::f32}) {
    const int H = 2, N = 40, hd = 64, slots = 5;
    auto q = randn(size_t(H) * N * hd), k = randn(size_t(slots) * N * H * hd), v = randn(size_t(slots) * N * H * hd);
    DevT dq({H, N, hd}, t, q), dk({slots, N, H, hd}, t, k), dv({slots, N, H, hd}, t, v);
    DevT out({N, H * hd}, t);
    Context ctx = make_ctx(stream, st.d, &st.host);
    st.set(1, 4, {0, 4});
    CudaGraph g;
    g.capture(stream, [&] { cu::attention(ctx, dq.t, dk.t, dv.t, out.t); });
    g.replay(stream);
    const std::string n = std::string("attention ") + tname(t) + " in CUDA graph";
    check_close(n + " (state A)", out.download(), attention_ref(q, k, v, H, N, hd, slots, {0, 4}), tol_of(t, true));
    st.set(2, 4, {0, 2, 3, 1, 4});
    out.poison();
    g.replay(stream);
    check_close(n + " replay (state B, more slots)", out.download(),
                attention_ref(q, k, v, H, N, hd, slots, {0, 2, 3, 1, 4}), tol_of(t, true));
    st.set(0, 3, {3});
    out.poison();
    g.replay(stream);
    check_close(n + " replay (state C, one slot)", out.download(), attention_ref(q, k, v, H, N, hd, slots, {3}),
                tol_of(t, true));
  }
  expect_error("attention rejects NFD_RT_ATTENTION=bogus", [&] {
    set_env("NFD_RT_ATTENTION", "bogus");
    DevT dq({1, 8, 64}, DType::bf16), dk({1, 8, 1, 64}, DType::bf16), out({8, 64}, DType::bf16);
    st.set(0, 0, {0});
    Context ctx = make_ctx(stream, st.d, &st.host);
    try {
      cu::attention(ctx, dq.t, dk.t, dk.t, out.t);
    } catch (...) {
      set_env("NFD_RT_ATTENTION", nullptr);
      throw;
    }
    set_env("NFD_RT_ATTENTION", nullptr);
  });
}

// ------------------------------------------------------------------------------------------------------------
static void test_rope(cudaStream_t stream, DevState& st) {
  const int H = 2, rows = 3, cols = 4, N = rows * cols, hd = 32, slots = 4, slot = 2, frame = 7;
  ops::RopeParams rp{{8, 12, 12}, 10000.0, cols};
  const int D = H * hd;
  auto qkv = randn(size_t(N) * 3 * D);
  std::vector<double> rq(size_t(H) * N * hd), rk(rq.size()), rv(rq.size());
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < hd / 2; ++j) {
        const double ang = tile::rope_angle(j, rp.rope_dims, rp.theta, frame, n / cols, n % cols);
        const double c = float(std::cos(ang)), s = float(std::sin(ang));
        const size_t src = size_t(n) * 3 * D + h * hd + 2 * j, dst = (size_t(h) * N + n) * hd + 2 * j;
        const size_t cdst = (size_t(n) * H + h) * hd + 2 * j;  // token-major cache slot [N, H, hd]
        for (int part = 0; part < 2; ++part) {
          double x0 = qkv[src + part * D], x1 = qkv[src + part * D + 1];
          auto& r = part == 0 ? rq : rk;
          const size_t o = part == 0 ? dst : cdst;
          r[o] = x0 * c - x1 * s;
          r[o + 1] = x0 * s + x1 * c;
        }
        rv[cdst] = qkv[src + 2 * D];
        rv[cdst + 1] = qkv[src + 2 * D + 1];
      }
  st.set(frame, slot, {slot});
  Context ctx = make_ctx(stream, st.d);
  for (DType t : kFloatTypes) {
    DevT dqkv({N, 3 * D}, t, qkv), q({H, N, hd}, t), kc({slots, N, H, hd}, t), vc({slots, N, H, hd}, t);
    cu::rope_qkv_split(ctx, dqkv.t, rp, q.t, kc.t, vc.t);
    auto kall = kc.download(), vall = vc.download();
    const size_t per = size_t(H) * N * hd;
    std::vector<float> ks(kall.begin() + slot * per, kall.begin() + (slot + 1) * per),
        vs(vall.begin() + slot * per, vall.begin() + (slot + 1) * per);
    size_t touched = 0;  // other slots must stay poisoned (NaN)
    for (size_t i = 0; i < kall.size(); ++i)
      if (i / per != size_t(slot) && (std::isfinite(kall[i]) || std::isfinite(vall[i]))) ++touched;
    std::string n = std::string("rope_qkv_split ") + tname(t);
    check_close(n + " q", q.download(), rq, tol_of(t));
    check_close(n + " k (slot 2)", ks, rk, tol_of(t));
    check_close(n + " v (slot 2)", vs, rv, tol_of(t));
    report(n + " other slots untouched", touched == 0, "touched=" + std::to_string(touched));
  }
}

// ------------------------------------------------------------------------------------------------------------
static void test_norms(const Context& ctx) {
  {  // layernorm_modulate
    const int M = 37, D = 1024;
    auto x = randn(size_t(M) * D, 2.f), shift = randn(D, 0.5f), scale = randn(D, 0.5f);
    for (auto& v : x) v = tile::round_bf16(v + 3.f);  // offset mean: exercises the centred variance
    std::vector<double> ref(x.size());
    for (int m = 0; m < M; ++m) {
      double mean = 0, var = 0;
      for (int i = 0; i < D; ++i) mean += x[m * D + i];
      mean /= D;
      for (int i = 0; i < D; ++i) var += (x[m * D + i] - mean) * (x[m * D + i] - mean);
      var /= D;
      for (int i = 0; i < D; ++i)
        ref[m * D + i] = (x[m * D + i] - mean) / std::sqrt(var + 1e-6) * (1 + scale[i]) + shift[i];
    }
    for (DType t : kFloatTypes) {
      DevT dx({M, D}, t, x), ds({D}, t, shift), dc({D}, t, scale), out({M, D}, t);
      cu::layernorm_modulate(ctx, dx.t, ds.t, dc.t, 1e-6f, out.t);
      check_close(std::string("layernorm_modulate ") + tname(t), out.download(), ref, tol_of(t));
    }
  }
  {  // add_silu
    const int n = 1000;
    auto a = randn(n), b = randn(n);
    std::vector<double> ref(n);
    for (int i = 0; i < n; ++i) {
      double v = double(a[i]) + b[i];
      ref[i] = v / (1 + std::exp(-v));
    }
    for (DType t : kFloatTypes) {
      DevT da({n}, t, a), db({n}, t, b), out({n}, t);
      cu::add_silu(ctx, da.t, db.t, out.t);
      check_close(std::string("add_silu ") + tname(t), out.download(), ref, tol_of(t));
    }
  }
  // groupnorm (+silu): a small image (one block per group) and the VAE's first level at 384x224 with an offset
  // mean (each group split over several blocks, statistics merged).
  for (int big = 0; big < 2; ++big) {
    const int C = big ? 64 : 32, G = big ? 32 : 8, H = big ? 56 : 9, W = big ? 96 : 11, cpg = C / G;
    auto x = randn(size_t(C) * H * W, 1.5f), gam = randn(C), bet = randn(C);
    if (big)
      for (auto& v : x) v = tile::round_bf16(v + 4.f);
    for (int silu = 0; silu < 2; ++silu) {
      std::vector<double> ref(x.size());
      for (int g = 0; g < G; ++g) {
        const size_t base = size_t(g) * cpg * H * W, n = size_t(cpg) * H * W;
        double mean = 0, var = 0;
        for (size_t i = 0; i < n; ++i) mean += x[base + i];
        mean /= n;
        for (size_t i = 0; i < n; ++i) var += (x[base + i] - mean) * (x[base + i] - mean);
        var /= n;
        for (size_t i = 0; i < n; ++i) {
          const int c = g * cpg + int(i / (H * W));
          double y = (x[base + i] - mean) / std::sqrt(var + 1e-6) * gam[c] + bet[c];
          ref[base + i] = silu ? y / (1 + std::exp(-y)) : y;
        }
      }
      for (DType t : kFloatTypes) {
        DevT dx({C, H, W}, t, x), dg({C}, t, gam), db({C}, t, bet), out({C, H, W}, t);
        cu::groupnorm(ctx, dx.t, dg.t, db.t, G, 1e-6f, silu, out.t);
        check_close(std::string("groupnorm ") + (silu ? "+silu " : "") + tname(t) + (big ? " 64x56x96 chunked" : ""),
                    out.download(), ref, tol_of(t, big));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
static void test_conv(const Context& ctx) {
  struct Case { int Cin, Cout, H, W, k, stride, pad; bool res; };
  const Case cases[] = {{8, 16, 13, 11, 3, 1, 1, false}, {16, 16, 13, 12, 3, 2, 1, false}, {16, 8, 9, 9, 1, 1, 0, true},
                        {64, 64, 24, 40, 3, 1, 1, true},
                        {4, 8, 10, 10, 3, 1, 1, true}};  // Cin*k*k = 36: the CUDA-core path, the rest tensor cores
  for (const Case& c : cases) {
    const int Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1, Wo = (c.W + 2 * c.pad - c.k) / c.stride + 1;
    auto x = randn(size_t(c.Cin) * c.H * c.W), w = randn(size_t(c.Cout) * c.Cin * c.k * c.k, 0.2f),
         b = randn(c.Cout, 0.1f), r = randn(size_t(c.Cout) * Ho * Wo);
    std::vector<double> ref(size_t(c.Cout) * Ho * Wo);
    for (int co = 0; co < c.Cout; ++co)
      for (int oy = 0; oy < Ho; ++oy)
        for (int ox = 0; ox < Wo; ++ox) {
          double a = b[co];
          for (int ci = 0; ci < c.Cin; ++ci)
            for (int ky = 0; ky < c.k; ++ky)
              for (int kx = 0; kx < c.k; ++kx) {
                const int iy = oy * c.stride - c.pad + ky, ix = ox * c.stride - c.pad + kx;
                if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
                a += double(w[((size_t(co) * c.Cin + ci) * c.k + ky) * c.k + kx]) * x[(size_t(ci) * c.H + iy) * c.W + ix];
              }
          const size_t o = (size_t(co) * Ho + oy) * Wo + ox;
          ref[o] = a + (c.res ? r[o] : 0.0);
        }
    for (DType t : kFloatTypes) {
      DevT dx({c.Cin, c.H, c.W}, t, x), dw({c.Cout, c.Cin, c.k, c.k}, t, w), db({c.Cout}, t, b),
          dr({c.Cout, Ho, Wo}, t, r), out({c.Cout, Ho, Wo}, t);
      cu::conv2d(ctx, dx.t, dw.t, db.t, c.stride, c.pad, out.t, c.res ? &dr.t : nullptr);
      char name[96];
      std::snprintf(name, sizeof name, "conv2d %s %dx%d k%d s%d Cin=%d Cout=%d%s", tname(t), c.H, c.W, c.k, c.stride,
                    c.Cin, c.Cout, c.res ? " +res" : "");
      check_close(name, out.download(), ref, tol_of(t));
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
static void test_noise(cudaStream_t stream, DevState& st) {
  const uint64_t seed = 0x0123456789ABCDEFull;
  const int frame = 5, step = 2, n = 4099;
  std::vector<float> z(n);
  for (int e = 0; e < n; ++e) z[e] = philox::normal(seed, frame, step, e);
  st.set(frame, 0, {0});
  Context ctx = make_ctx(stream, st.d);
  DevT out({n}, DType::f32);
  cu::noise_mix(ctx, seed, step, 0.f, Tensor{}, 1.f, out.t);
  check_exact("noise_mix f32 == host Philox bits (b=1, no x)", out.download(), z);
  // Known-answer: Random123's philox4x32-10 test vector (counter 0, key 0).
  philox::U32x4 c0{{0, 0, 0, 0}};
  philox::U32x4 w = philox::philox4x32_10(c0, 0, 0);
  report("philox4x32_10 known answer (Random123 kat)", w.v[0] == 0x6627e8d5u && w.v[1] == 0xe169c58du &&
         w.v[2] == 0xbc57ac4cu && w.v[3] == 0x9b00dbd8u, "");
  auto x = randn(n);
  for (DType t : kFloatTypes) {
    DevT dx({n}, t, x), o({n}, t);
    cu::noise_mix(ctx, seed, step, 0.75f, dx.t, 0.5f, o.t);
    std::vector<double> ref(n);
    for (int e = 0; e < n; ++e) ref[e] = 0.75 * x[e] + 0.5 * z[e];
    check_close(std::string("noise_mix a*x+b*noise ") + tname(t), o.download(), ref, tol_of(t));
  }
}

// ------------------------------------------------------------------------------------------------------------
static void test_layout_ops(const Context& ctx, cudaStream_t stream) {
  const int C = 4, h = 6, w = 10, p = 2, rows = h / p, cols = w / p, N = rows * cols, P = C * p * p;
  auto lat = randn(size_t(C) * h * w);
  std::vector<float> tok_ref(size_t(N) * P);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int py = 0; py < p; ++py)
        for (int px = 0; px < p; ++px)
          tok_ref[size_t(n) * P + (c * p + py) * p + px] = lat[(size_t(c) * h + (n / cols) * p + py) * w + (n % cols) * p + px];
  for (DType t : kFloatTypes) {
    DevT dl({C, h, w}, t, lat), tok({N, P}, t);
    cu::patchify(ctx, dl.t, p, tok.t);
    check_exact(std::string("patchify ") + tname(t), tok.download(), tok_ref);
    // unpatchify_axpy(tokens, dt) on the same latent: latent + dt * latent
    cu::unpatchify_axpy(ctx, tok.t, p, -0.25f, dl.t);
    std::vector<double> ref(lat.size());
    for (size_t i = 0; i < lat.size(); ++i) ref[i] = lat[i] - 0.25 * lat[i];
    check_close(std::string("unpatchify_axpy ") + tname(t), dl.download(), ref, tol_of(t));
  }
  {  // upsample
    const int Cu = 3, H = 5, W = 7;
    auto x = randn(size_t(Cu) * H * W);
    std::vector<float> ref(size_t(Cu) * 4 * H * W);
    for (int c = 0; c < Cu; ++c)
      for (int y = 0; y < 2 * H; ++y)
        for (int xx = 0; xx < 2 * W; ++xx) ref[(size_t(c) * 2 * H + y) * 2 * W + xx] = x[(size_t(c) * H + y / 2) * W + xx / 2];
    for (DType t : kFloatTypes) {
      DevT dx({Cu, H, W}, t, x), out({Cu, 2 * H, 2 * W}, t);
      cu::upsample_nearest2x(ctx, dx.t, out.t);
      check_exact(std::string("upsample_nearest2x ") + tname(t), out.download(), ref);
    }
  }
  {  // upsample2x_conv2d: conv3x3 (pad 1) of the nearest-2x upsampled image, reference in double
    const int Ci = 16, Co = 8, H = 6, W = 5;
    auto x = randn(size_t(Ci) * H * W), w = randn(size_t(Co) * Ci * 9, 0.25f), b = randn(size_t(Co));
    std::vector<double> ref(size_t(Co) * 4 * H * W);
    for (int co = 0; co < Co; ++co)
      for (int oy = 0; oy < 2 * H; ++oy)
        for (int ox = 0; ox < 2 * W; ++ox) {
          double a = b[co];
          for (int ci = 0; ci < Ci; ++ci)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int uy = oy - 1 + ky, ux = ox - 1 + kx;
                if (uy < 0 || uy >= 2 * H || ux < 0 || ux >= 2 * W) continue;
                a += double(w[((size_t(co) * Ci + ci) * 3 + ky) * 3 + kx]) * x[(size_t(ci) * H + uy / 2) * W + ux / 2];
              }
          ref[(size_t(co) * 2 * H + oy) * 2 * W + ox] = a;
        }
    for (DType t : kFloatTypes) {
      DevT dx({Ci, H, W}, t, x), dw({Co, Ci, 3, 3}, t, w), db({Co}, t, b), out({Co, 2 * H, 2 * W}, t);
      cu::upsample2x_conv2d(ctx, dx.t, dw.t, db.t, out.t);
      check_close(std::string("upsample2x_conv2d ") + tname(t), out.download(), ref, tol_of(t));
    }
  }
  {  // to_uint8 / from_uint8 (f32: exact against the formula in float)
    const int H = 8, W = 9;
    auto img = randn(size_t(3) * H * W, 0.7f);
    img[0] = -1.f; img[1] = 1.f; img[2] = 3.f; img[3] = -2.f;
    std::vector<float> ref(size_t(H) * W * 3);
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < H * W; ++i) {
        volatile float v = (img[c * H * W + i] + 1.f);
        v = v * 127.5f;
        v = v + 0.5f;
        ref[i * 3 + c] = std::min(255.f, std::max(0.f, std::floor(float(v))));
      }
    DevT di({3, H, W}, DType::f32, img), u({H, W, 3}, DType::u8);
    cu::to_uint8(ctx, di.t, u.t);
    check_exact("to_uint8 f32", u.download(), ref);
    std::vector<float> back(size_t(3) * H * W);
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < H * W; ++i) {
        volatile float v = ref[i * 3 + c] / 127.5f;
        back[c * H * W + i] = v - 1.f;
      }
    DevT im({3, H, W}, DType::f32);
    cu::from_uint8(ctx, u.t, im.t);
    check_exact("from_uint8 f32", im.download(), back);
  }
  {  // copy: host f32 -> device bf16 -> device f16 -> host f32 (values are bf16-exact: lossless)
    const int n = 777;
    auto v = randn(n);
    Tensor host_src{v.data(), DType::f32, Device::cpu, {n}};
    DevT b({n}, DType::bf16), hf({n}, DType::f16);
    cu::copy(ctx, host_src, b.t);
    check_exact("copy host f32 -> cuda bf16", b.download(), v);
    cu::copy(ctx, b.t, hf.t);
    std::vector<float> back(n, -1.f);
    Tensor host_dst{back.data(), DType::f32, Device::cpu, {n}};
    cu::copy(ctx, hf.t, host_dst);
    check_exact("copy cuda bf16 -> cuda f16 -> host f32", back, v);
    std::vector<float> back2(n, -1.f);
    Tensor host_dst2{back2.data(), DType::f32, Device::cpu, {n}};
    DevT f({n}, DType::f32, v);
    cu::copy(ctx, f.t, host_dst2);
    check_exact("copy cuda f32 -> host f32", back2, v);
  }
}

static void test_backend() {
  report("cuda_available", cuda_available(), cuda_device_name());
  void* p = cuda_device::malloc(1024);
  std::vector<uint8_t> a(1024), b(1024, 0);
  for (int i = 0; i < 1024; ++i) a[i] = uint8_t(i * 7);
  void* s = cuda_stream_create();
  cuda_device::memcpy(p, true, a.data(), false, 1024, s);
  cuda_device::memcpy(b.data(), false, p, true, 1024, s);
  cuda_device::synchronize(s);
  report("cuda_device malloc/memcpy round trip", a == b, "");
  cuda_device::free(p);
  cuda_stream_destroy(s);
  expect_error("cuda_device::malloc of 1 PiB -> nfd::Error", [] { cuda_device::malloc(size_t(1) << 50); });
}

int main() {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;  // CTest's SKIP_RETURN_CODE
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  DevState st;
  st.set(0, 0, {0});
  Context ctx = make_ctx(stream, st.d);
  const std::pair<const char*, std::function<void()>> groups[] = {
      {"backend", [&] { test_backend(); }},
      {"linear", [&] { test_linear(ctx); }},
      {"attention", [&] { test_attention(stream, st); }},
      {"rope", [&] { test_rope(stream, st); }},
      {"norms", [&] { test_norms(ctx); }},
      {"conv", [&] { test_conv(ctx); }},
      {"noise", [&] { test_noise(stream, st); }},
      {"layout", [&] { test_layout_ops(ctx, stream); }},
  };
  for (auto& g : groups) {
    try {
      g.second();
    } catch (const std::exception& e) {
      report(std::string(g.first) + " group", false, std::string("exception: ") + e.what());
    }
  }
  CK(cudaStreamSynchronize(stream));
  CK(cudaStreamDestroy(stream));
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
