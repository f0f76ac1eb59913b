// nfd_rt._core.ops: every op of ops/ops.h on numpy float32 arrays, on a chosen device and dtype, so the op table
// (tests/ops/test_ops.py) runs each op on every backend against PyTorch. Inputs are copied to fresh device tensors
// of `dtype`, the op runs, outputs come back as float32 (uint8 for to_uint8). The bindings check only their own
// arguments: whatever reaches an op is checked by its contract (ops/NAME.cc), so the table tests the contracts.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backends/device.h"
#include "python/bindings.h"
#include "core/error.h"
#include "ops/ops.h"

namespace py = pybind11;
using namespace nfd;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// Timing mode for benchmarks/ops.py (set_timing): each op call then runs `warmup` untimed calls and `samples`
// timed batches of `repeat` calls on its already uploaded inputs (on CUDA one captured graph of the batch,
// replayed, so launch gaps stay out); last_times() gives seconds per call of each batch. The input copies and
// the copy back are never timed. Ops that update an input in place (gated_residual, unpatchify_axpy) then
// return that input after every repeat: the values are not meaningful, the time is.
struct Timing {
  int repeat = 0;  // 0: timing off, one plain call
  int warmup = 2;
  int samples = 5;
  bool graph = true;
  std::vector<double> last;
};
Timing g_timing;

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// Extent i of t, 0 where t has no such dimension: the bindings size outputs from their inputs without
// checking them, so that a bad input reaches the op and its contract (ops/NAME.cc) says what is wrong.
int64_t dim_or0(const Tensor& t, int i) { return i < t.rank() ? t.dim(i) : 0; }

// Testing hooks every op takes besides device, dtype and threads, so the op table (tests/ops/test_ops.py) can hand
// an op the arguments its contract must refuse. Keys are the op's argument names (ops/ops.h):
//   dtypes  {"w": "bfloat16"}  that argument in another dtype (float32, bfloat16, float16 or uint8)
//   devices {"x": "cpu"}       that argument on another device
//   shapes  {"out": [2, 3]}    that output allocated with another shape
//   alias   {"out": "x"}       that argument is another one's memory (the same tensor)
struct Hooks {
  std::map<std::string, std::string> dtypes, devices, alias;
  std::map<std::string, std::vector<int64_t>> shapes;
};

DType parse_any_dtype(const std::string& s) { return s == "uint8" ? DType::u8 : parse_dtype(s); }

// Everything one op call needs: arenas on the devices, a context and a FrameState in device memory; inputs are
// uploaded and outputs allocated by argument name (the hooks apply by name).
struct Call {
  Device device;
  DType dtype;
  Hooks hooks;
  Arena arena, host_arena{Device::cpu};
  Context ctx;
  void* stream = nullptr;
  std::map<std::string, Tensor> named;
  Call(const std::string& dev, const std::string& dt, int threads, Hooks h = {})
      : device(parse_device(dev)), dtype(parse_dtype(dt)), hooks(std::move(h)), arena(device) {
    if (device == Device::cuda && !cuda_available()) fail(ErrorKind::unsupported, "no CUDA device available");
    ctx.device = device;
    ctx.threads = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
    if (device == Device::cuda) ctx.stream = stream = cuda_stream_create();
  }
  ~Call() {
    if (stream) cuda_stream_destroy(stream);
  }
  FrameState host_state{};
  void set_state(const FrameState& st) {
    Tensor t = arena.alloc({int64_t(sizeof(FrameState))}, DType::u8);
    device_memcpy(t.data, device, &st, Device::cpu, sizeof(FrameState), ctx.stream);
    ctx.state = reinterpret_cast<const FrameState*>(t.data);
    host_state = st;
    ctx.host_state = &host_state;
  }
  template <class M, class V>
  static V lookup(const M& m, const std::string& name, V fallback) {
    auto it = m.find(name);
    return it == m.end() ? fallback : it->second;
  }
  // A fresh tensor for argument `name` (zero-filled), on its device and in its dtype (`dt` unless hooked).
  Tensor alloc(const std::string& name, std::vector<int64_t> shape, DType dt) {
    auto al = hooks.alias.find(name);
    if (al != hooks.alias.end()) {
      auto it = named.find(al->second);
      if (it == named.end())
        throw py::value_error("alias: '" + name + "' names '" + al->second + "', not an argument before it");
      return named[name] = it->second;
    }
    const Device d = parse_device(lookup(hooks.devices, name, std::string(device_name(device))));
    if (d == Device::cuda && device != Device::cuda)
      throw py::value_error("devices: cuda for '" + name + "' needs device='cuda'");
    dt = hooks.dtypes.count(name) ? parse_any_dtype(hooks.dtypes.at(name)) : dt;
    return named[name] = (d == device ? arena : host_arena).alloc(lookup(hooks.shapes, name, std::move(shape)), dt);
  }
  // Input `name`: the array's values in a fresh tensor (uint8 tensors take the values cast to bytes).
  Tensor in(const std::string& name, const F32Array& a) {
    Tensor t = alloc(name, shape_of(a), dtype);
    if (hooks.alias.count(name)) return t;
    Tensor host{const_cast<float*>(a.data()), DType::f32, Device::cpu, shape_of(a)};
    if (t.dtype == DType::u8) {
      std::vector<uint8_t> bytes(size_t(a.size()));
      for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(a.data()[i]);
      device_memcpy(t.data, t.device, bytes.data(), Device::cpu, bytes.size(), ctx.stream);
    } else {
      ops::copy(ctx, host, t);
    }
    return t;
  }
  Tensor in_opt(const std::string& name, const py::object& o) {
    return o.is_none() ? Tensor{} : in(name, o.cast<F32Array>());
  }
  Tensor out(const std::string& name, std::vector<int64_t> shape, DType dt) {
    return alloc(name, std::move(shape), dt);
  }
  Tensor out(const std::string& name, std::vector<int64_t> shape) { return out(name, std::move(shape), dtype); }
  // Runs the op once, or as set_timing says.
  template <class F>
  void run(F&& f) {
    if (g_timing.repeat <= 0) {
      f();
      return;
    }
    using clock = std::chrono::steady_clock;
    g_timing.last.clear();
    for (int i = 0; i < g_timing.warmup; ++i) f();
    device_synchronize(device, ctx.stream);
    std::unique_ptr<CudaGraph> graph;
    if (device == Device::cuda && g_timing.graph) {
      graph = std::make_unique<CudaGraph>();
      graph->capture(stream, [&] {
        for (int r = 0; r < g_timing.repeat; ++r) f();
      });
      graph->replay(stream);  // the first replay uploads the graph: untimed
      device_synchronize(device, ctx.stream);
    }
    for (int s = 0; s < g_timing.samples; ++s) {
      const auto t0 = clock::now();
      if (graph) {
        graph->replay(stream);
      } else {
        for (int r = 0; r < g_timing.repeat; ++r) f();
      }
      device_synchronize(device, ctx.stream);
      g_timing.last.push_back(std::chrono::duration<double>(clock::now() - t0).count() / g_timing.repeat);
    }
  }
  // A result back on the host: float32, or uint8 for a u8 tensor.
  py::array back(const Tensor& t) {
    device_synchronize(device, ctx.stream);
    if (t.dtype == DType::u8) {
      py::array_t<uint8_t> r(t.shape);
      device_memcpy(r.mutable_data(), Device::cpu, t.data, t.device, t.bytes(), ctx.stream);
      return std::move(r);
    }
    py::array_t<float> r(t.shape);
    Tensor host{r.mutable_data(), DType::f32, Device::cpu, t.shape};
    ops::copy(ctx, t, host);
    device_synchronize(device, ctx.stream);
    return std::move(r);
  }
};

Hooks hooks_of(const py::dict& dtypes, const py::dict& devices, const py::dict& shapes, const py::dict& alias) {
  Hooks h;
  for (auto kv : dtypes) h.dtypes[kv.first.cast<std::string>()] = kv.second.cast<std::string>();
  for (auto kv : devices) h.devices[kv.first.cast<std::string>()] = kv.second.cast<std::string>();
  for (auto kv : shapes) h.shapes[kv.first.cast<std::string>()] = kv.second.cast<std::vector<int64_t>>();
  for (auto kv : alias) h.alias[kv.first.cast<std::string>()] = kv.second.cast<std::string>();
  return h;
}

ops::Epilogue parse_epilogue(const std::string& s) {
  if (s == "none") return ops::Epilogue::none;
  if (s == "gelu_tanh") return ops::Epilogue::gelu_tanh;
  if (s == "gated_residual") return ops::Epilogue::gated_residual;
  if (s == "gelu_erf") return ops::Epilogue::gelu_erf;
  if (s == "silu") return ops::Epilogue::silu;
  throw py::value_error("epilogue must be 'none', 'gelu_tanh', 'gated_residual', 'gelu_erf' or 'silu', got '" + s +
                        "'");
}

ops::Norm parse_norm(const std::string& s) {
  if (s == "layer") return ops::Norm::layer;
  if (s == "rms") return ops::Norm::rms;
  throw py::value_error("norm must be 'layer' or 'rms', got '" + s + "'");
}

ops::Pixels parse_pixels(const std::string& s) {
  if (s == "rounded") return ops::Pixels::rounded;
  if (s == "truncated") return ops::Pixels::truncated;
  if (s == "unit") return ops::Pixels::unit;
  throw py::value_error("pixels must be 'rounded', 'truncated' or 'unit', got '" + s + "'");
}

}  // namespace

void nfd_register_ops(py::module_& m) {
  m.doc() = "Single ops of the runtime on numpy arrays (testing): inputs float32, computed on device/dtype.";

  m.def("set_timing", [](int repeat, int warmup, int samples, bool graph) {
    if (repeat < 0 || warmup < 0 || samples < 1) throw py::value_error("set_timing: repeat >= 0, warmup >= 0, samples >= 1");
    g_timing.repeat = repeat;
    g_timing.warmup = warmup;
    g_timing.samples = samples;
    g_timing.graph = graph;
    g_timing.last.clear();
  }, py::arg("repeat"), py::arg("warmup") = 2, py::arg("samples") = 5, py::arg("graph") = true,
     "Time every following op call: `warmup` untimed calls, then `samples` batches of `repeat` calls (on CUDA "
     "one captured graph per batch); repeat=0 turns timing off. Read the times with last_times().");
  m.def("last_times", [] { return g_timing.last; },
        "Seconds per call of each timed batch of the last op call (empty when timing is off).");
// The arguments every op takes after its own: where and how it runs, and the testing hooks (Hooks above).
#define NFD_DEV                                                                                              \
  py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("threads") = 0, py::arg("dtypes") = py::dict(), \
      py::arg("devices") = py::dict(), py::arg("shapes") = py::dict(), py::arg("alias") = py::dict()
#define NFD_DEV_PARAMS                                                                                       \
  const std::string &device, const std::string &dtype, int threads, const py::dict &dtypes,                  \
      const py::dict &devices, const py::dict &shapes, const py::dict &alias
#define NFD_CALL(c) Call c(device, dtype, threads, hooks_of(dtypes, devices, shapes, alias))

  m.def("linear", [](F32Array x, F32Array w, py::object b, const std::string& epilogue, py::object gate,
                     py::object y, bool prepare, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tw = c.in("w", w), tb = c.in_opt("bias", b), tg = c.in_opt("gate", gate);
    ops::Epilogue e = parse_epilogue(epilogue);
    Tensor ty = y.is_none() ? c.out("y", {dim_or0(tx, 0), dim_or0(tw, 0)}) : c.in("y", y.cast<F32Array>());
    if (prepare) ops::linear_prepare(c.ctx, tx, tw, tb, ty, e);
    c.run([&] { ops::linear(c.ctx, tx, tw, tb, ty, e, tg.defined() ? &tg : nullptr); });
    return c.back(ty);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("epilogue") = "none",
     py::arg("gate") = py::none(), py::arg("y") = py::none(), py::arg("prepare") = false, NFD_DEV,
     "y = x w^T + b with an epilogue; y: the residual stream gated_residual adds to; prepare: run "
     "ops::linear_prepare first (CUDA: times the GEMM engines for the shape).");

  m.def("gated_add", [](F32Array x, F32Array gate, F32Array y, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tg = c.in("gate", gate), ty = c.in("y", y);
    c.run([&] { ops::gated_add(c.ctx, tx, tg, ty); });
    return c.back(ty);
  }, py::arg("x"), py::arg("gate"), py::arg("y"), NFD_DEV);

  m.def("gated_add_layernorm_modulate", [](F32Array x, F32Array gate, F32Array y, F32Array shift, F32Array scale,
                                            float eps, const std::string& norm, NFD_DEV_PARAMS) {
    const ops::Norm nm = parse_norm(norm);
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tg = c.in("gate", gate), ty = c.in("y", y), ts = c.in("shift", shift),
           tc = c.in("scale", scale), to = c.out("out", ty.shape);
    c.run([&] { ops::gated_add_layernorm_modulate(c.ctx, tx, tg, ty, ts, tc, eps, to, nm); });
    return py::make_tuple(c.back(ty), c.back(to));
  }, py::arg("x"), py::arg("gate"), py::arg("y"), py::arg("shift"), py::arg("scale"), py::arg("eps") = 1e-6f,
     py::arg("norm") = "layer", NFD_DEV,
     "y += gate * x, then out = Norm(y) * (1 + scale) + shift (norm 'layer' or 'rms'); returns (y, out).");

  m.def("layernorm_modulate", [](F32Array x, F32Array shift, F32Array scale, float eps, float scale_offset,
                                 const std::string& norm, NFD_DEV_PARAMS) {
    const ops::Norm nm = parse_norm(norm);
    NFD_CALL(c);
    Tensor tx = c.in("x", x), ts = c.in("shift", shift), tc = c.in("scale", scale), to = c.out("out", tx.shape);
    c.run([&] { ops::layernorm_modulate(c.ctx, tx, ts, tc, eps, to, scale_offset, nm); });
    return c.back(to);
  }, py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("eps") = 1e-6f, py::arg("scale_offset") = 1.f,
     py::arg("norm") = "layer", NFD_DEV,
     "out = Norm(x) * (scale_offset + scale) + shift (scale_offset 0: a LayerNorm with affine; norm 'layer' or "
     "'rms').");

  m.def("add_silu", [](F32Array a, py::object b, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor ta = c.in("a", a), tb = c.in_opt("b", b), to = c.out("out", ta.shape);
    c.run([&] { ops::add_silu(c.ctx, ta, tb, to); });
    return c.back(to);
  }, py::arg("a"), py::arg("b") = py::none(), NFD_DEV, "out = silu(a + b), or silu(a) without b.");

  m.def("rope_qkv_split", [](F32Array qkv, int frame_index, std::vector<int> rope_dims, double theta, int grid_cols,
                             int heads, int slots, int write_slot, py::object table, int kv_heads, float qk_norm_eps,
                             bool deinterleave, int time_pairs, double time_scale, py::object v0, float v_mix,
                             NFD_DEV_PARAMS) {
    if (rope_dims.size() != 3) throw py::value_error("rope_dims must have 3 entries");
    if (heads <= 0 || slots < 0) throw py::value_error("heads must be > 0 and slots >= 0");
    const int hkv = kv_heads > 0 ? kv_heads : heads;
    NFD_CALL(c);
    FrameState st{};
    st.frame_index = frame_index;
    st.write_slot = write_slot;
    c.set_state(st);
    Tensor tq = c.in("qkv", qkv);
    const int64_t N = dim_or0(tq, 0), hd = dim_or0(tq, 1) / (heads + 2 * hkv);
    Tensor q = c.out("q_out", {heads, N, hd}), k = c.out("k_cache", {slots, N, hkv, hd}),
           v = c.out("v_cache", {slots, N, hkv, hd});
    ops::RopeParams rp{{rope_dims[0], rope_dims[1], rope_dims[2]}, theta, grid_cols};
    rp.qk_norm_eps = qk_norm_eps;
    rp.deinterleave = deinterleave;
    rp.time_pairs = time_pairs;
    rp.time_scale = time_scale;
    rp.v_mix = v_mix;
    Tensor tt = c.in_opt("table", table), tv = c.in_opt("v0", v0);
    c.run([&] {
      ops::rope_qkv_split(c.ctx, tq, rp, q, k, v, table.is_none() ? nullptr : &tt, v0.is_none() ? nullptr : &tv);
    });
    return py::make_tuple(c.back(q), c.back(k), c.back(v));
  }, py::arg("qkv"), py::arg("frame_index"), py::arg("rope_dims"), py::arg("theta"), py::arg("grid_cols"),
     py::arg("heads"), py::arg("slots") = 1, py::arg("write_slot") = 0, py::arg("table") = py::none(),
     py::arg("kv_heads") = 0, py::arg("qk_norm_eps") = 0.f, py::arg("deinterleave") = false,
     py::arg("time_pairs") = 0, py::arg("time_scale") = 1.0, py::arg("v0") = py::none(), py::arg("v_mix") = 0.f,
     NFD_DEV,
     "Returns q [H, N, hd] and the caches k, v [slots, N, Hkv, hd] (zero but for slot write_slot). table: (cos, sin) "
     "[N, P, 2] of the first P pairs instead of the 3D formula; kv_heads: Hkv (0: = heads); the Waypoint variant: "
     "qk_norm_eps, deinterleave, time_pairs (with time_scale), v0 (layer 0's qkv) and v_mix.");

  m.def("attention", [](F32Array q, F32Array k_cache, F32Array v_cache, std::vector<int> visible_slots,
                        bool prepare, const std::string& keys, NFD_DEV_PARAMS) {
    if (keys != "all_tokens" && keys != "same_token")
      throw py::value_error("keys must be 'all_tokens' or 'same_token', got '" + keys + "'");
    const ops::AttentionKeys k = keys == "same_token" ? ops::AttentionKeys::same_token : ops::AttentionKeys::all_tokens;
    if (visible_slots.size() > size_t(FrameState::kMaxSlots))
      throw py::value_error("visible_slots holds at most " + std::to_string(FrameState::kMaxSlots) + " slots");
    NFD_CALL(c);
    FrameState st{};
    st.num_visible = int(visible_slots.size());
    for (size_t i = 0; i < visible_slots.size(); ++i) st.visible_slots[i] = visible_slots[i];
    c.set_state(st);
    Tensor tq = c.in("q", q), tk = c.in("k_cache", k_cache), tv = c.in("v_cache", v_cache);
    Tensor to = c.out("out", {dim_or0(tq, 1), dim_or0(tq, 0) * dim_or0(tq, 2)});
    if (prepare) ops::attention_prepare(c.ctx, tq, tk, tv, to);
    c.run([&] { ops::attention(c.ctx, tq, tk, tv, to, k); });
    return c.back(to);
  }, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("visible_slots"), py::arg("prepare") = false,
     py::arg("keys") = "all_tokens", NFD_DEV,
     "prepare: run ops::attention_prepare first (CUDA: times both query tiles of the kernel); keys: 'all_tokens' "
     "or 'same_token' (each query over its own token of the visible slots).");

  m.def("patchify", [](F32Array latent, int patch, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tl = c.in("latent", latent);
    const int64_t p = patch > 0 ? patch : 1;
    Tensor tt = c.out("tokens", {(dim_or0(tl, 1) / p) * (dim_or0(tl, 2) / p), dim_or0(tl, 0) * p * p});
    c.run([&] { ops::patchify(c.ctx, tl, patch, tt); });
    return c.back(tt);
  }, py::arg("latent"), py::arg("patch"), NFD_DEV);

  m.def("unpatchify_axpy", [](F32Array tokens, int patch, float dt, F32Array latent, float keep, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tt = c.in("tokens", tokens), tl = c.in("latent", latent);
    c.run([&] { ops::unpatchify_axpy(c.ctx, tt, patch, dt, tl, keep); });
    return c.back(tl);
  }, py::arg("tokens"), py::arg("patch"), py::arg("dt"), py::arg("latent"), py::arg("keep") = 1.f, NFD_DEV,
     "latent = keep * latent + dt * unpatchify(tokens) (keep 0: latent's values are not read).");

  m.def("noise_mix", [](uint64_t seed, int frame, int step, float a, py::object x, float b, std::vector<int64_t> shape,
                        NFD_DEV_PARAMS) {
    NFD_CALL(c);
    FrameState st{};
    st.frame_index = frame;
    c.set_state(st);
    Tensor tx = c.in_opt("x", x);
    Tensor to = c.out("out", tx.defined() ? tx.shape : shape);
    c.run([&] { ops::noise_mix(c.ctx, seed, step, a, tx, b, to); });
    return c.back(to);
  }, py::arg("seed"), py::arg("frame"), py::arg("step"), py::arg("a") = 0.f, py::arg("x") = py::none(),
     py::arg("b") = 1.f, py::arg("shape") = std::vector<int64_t>{}, NFD_DEV);

  m.def("noise", [](uint64_t seed, int frame, int step, int64_t count, const std::string& device, int threads) {
    Call c(device, "float32", threads);
    FrameState st{};
    st.frame_index = frame;
    c.set_state(st);
    Tensor to = c.out("out", {count});
    c.run([&] { ops::noise_mix(c.ctx, seed, step, 0.f, Tensor{}, 1.f, to); });
    return c.back(to);
  }, py::arg("seed"), py::arg("frame"), py::arg("step"), py::arg("count"), py::arg("device") = "cpu",
     py::arg("threads") = 0);

  m.def("conv2d", [](F32Array x, F32Array w, py::object b, int stride, int pad, py::object residual,
                     const std::string& activation, NFD_DEV_PARAMS) {
    const ops::Activation act = activation == "relu"      ? ops::Activation::relu
                                : activation == "clamp01" ? ops::Activation::clamp01
                                : activation == "none"    ? ops::Activation::none
                                                          : throw py::value_error(
                                                                "activation must be 'none', 'relu' or 'clamp01', got '" +
                                                                activation + "'");
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tw = c.in("w", w), tb = c.in_opt("bias", b), tr = c.in_opt("residual", residual);
    const int64_t k = dim_or0(tw, 2), s = stride >= 1 ? stride : 1;
    auto extent = [&](int i) { return std::max<int64_t>(0, (dim_or0(tx, i) + 2 * pad - k) / s + 1); };
    Tensor to = c.out("out", {dim_or0(tw, 0), extent(1), extent(2)});
    c.run([&] { ops::conv2d(c.ctx, tx, tw, tb, stride, pad, to, tr.defined() ? &tr : nullptr, act); });
    return c.back(to);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("stride") = 1, py::arg("pad") = 0,
     py::arg("residual") = py::none(), py::arg("activation") = "none", NFD_DEV);

  m.def("softcap", [](F32Array x, float cap, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), to = c.out("out", tx.shape);
    c.run([&] { ops::softcap(c.ctx, tx, cap, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("cap"), NFD_DEV, "out = cap * tanh(x / cap).");

  m.def("pixel_shuffle", [](F32Array x, int r, bool inverse, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x);
    const int64_t R = r > 0 ? r : 1;
    Tensor to = inverse ? c.out("out", {dim_or0(tx, 0) * R * R, dim_or0(tx, 1) / R, dim_or0(tx, 2) / R})
                        : c.out("out", {dim_or0(tx, 0) / (R * R), dim_or0(tx, 1) * R, dim_or0(tx, 2) * R});
    c.run([&] { ops::pixel_shuffle(c.ctx, tx, r, inverse, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("r"), py::arg("inverse") = false, NFD_DEV,
     "F.pixel_shuffle(x, r) of x [C r^2, H, W], or F.pixel_unshuffle with inverse.");

  m.def("resize_bilinear", [](F32Array x, int height, int width, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), to = c.out("out", {dim_or0(tx, 0), height, width});
    c.run([&] { ops::resize_bilinear(c.ctx, tx, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("height"), py::arg("width"), NFD_DEV,
     "F.interpolate(x[None], (height, width), mode='bilinear', align_corners=False)[0].");

  m.def("upsample2x_conv2d", [](F32Array x, F32Array w, py::object b, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tw = c.in("w", w), tb = c.in_opt("bias", b);
    Tensor to = c.out("out", {dim_or0(tw, 0), 2 * dim_or0(tx, 1), 2 * dim_or0(tx, 2)});
    c.run([&] { ops::upsample2x_conv2d(c.ctx, tx, tw, tb, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), NFD_DEV);

  m.def("groupnorm", [](F32Array x, F32Array gamma, F32Array beta, int groups, float eps, bool silu,
                        NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), tg = c.in("gamma", gamma), tb = c.in("beta", beta), to = c.out("out", tx.shape);
    c.run([&] { ops::groupnorm(c.ctx, tx, tg, tb, groups, eps, silu, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("groups"), py::arg("eps") = 1e-6f,
     py::arg("silu") = false, NFD_DEV);

  m.def("upsample_nearest2x", [](F32Array x, NFD_DEV_PARAMS) {
    NFD_CALL(c);
    Tensor tx = c.in("x", x), to = c.out("out", {dim_or0(tx, 0), 2 * dim_or0(tx, 1), 2 * dim_or0(tx, 2)});
    c.run([&] { ops::upsample_nearest2x(c.ctx, tx, to); });
    return c.back(to);
  }, py::arg("x"), NFD_DEV);

  m.def("to_uint8", [](F32Array image, const std::string& pixels, NFD_DEV_PARAMS) {
    const ops::Pixels px = parse_pixels(pixels);
    NFD_CALL(c);
    Tensor ti = c.in("image", image), to = c.out("out", {dim_or0(ti, 1), dim_or0(ti, 2), 3}, DType::u8);
    c.run([&] { ops::to_uint8(c.ctx, ti, to, px); });
    return c.back(to);
  }, py::arg("image"), py::arg("pixels") = "rounded", NFD_DEV);

  m.def("from_uint8", [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> frame,
                         const std::string& pixels, NFD_DEV_PARAMS) {
    const ops::Pixels px = parse_pixels(pixels);
    NFD_CALL(c);
    // The frame's bytes as float32 values: in() uploads them into a u8 tensor as they are (or, hooked, as floats).
    F32Array values(shape_of(frame));
    for (py::ssize_t i = 0; i < frame.size(); ++i) values.mutable_data()[i] = float(frame.data()[i]);
    if (!c.hooks.dtypes.count("frame")) c.hooks.dtypes["frame"] = "uint8";
    Tensor tf = c.in("frame", values), to = c.out("image", {3, dim_or0(tf, 0), dim_or0(tf, 1)});
    c.run([&] { ops::from_uint8(c.ctx, tf, to, px); });
    return c.back(to);
  }, py::arg("frame"), py::arg("pixels") = "rounded", NFD_DEV);

  m.def("copy", [](F32Array x, py::object src_device, py::object src_dtype, NFD_DEV_PARAMS) {
    const std::string from_device = src_device.is_none() ? device : src_device.cast<std::string>();
    const std::string from_dtype = src_dtype.is_none() ? dtype : src_dtype.cast<std::string>();
    Hooks h = hooks_of(dtypes, devices, shapes, alias);
    h.devices.emplace("src", from_device);
    h.devices.emplace("dst", device);
    h.dtypes.emplace("src", from_dtype);
    const bool cuda = parse_device(from_device) == Device::cuda || parse_device(device) == Device::cuda;
    Call c(cuda ? "cuda" : "cpu", dtype, threads, h);
    Tensor ts = c.in("src", x), td = c.out("dst", ts.shape);
    c.run([&] { ops::copy(c.ctx, ts, td); });
    return c.back(td);
  }, py::arg("x"), py::arg("src_device") = py::none(), py::arg("src_dtype") = py::none(), NFD_DEV,
     "x uploaded as src (src_device, src_dtype; default: device, dtype), ops::copy into dst (device, dtype), "
     "dst back as float32.");
#undef NFD_CALL
#undef NFD_DEV_PARAMS
#undef NFD_DEV
}
