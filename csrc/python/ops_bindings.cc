// nfd_rt._core.ops: every op of ops/ops.h on numpy float32 arrays, on a chosen device and dtype, so tests can
// compare each op against PyTorch and the CUDA backend against the CPU one. Inputs are copied to fresh device
// tensors of `dtype`, the op runs, outputs come back as float32 (uint8 for to_uint8).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

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

// Everything one op call needs: an arena on the device, a context and a FrameState in device memory.
struct Call {
  Device device;
  DType dtype;
  Arena arena;
  Context ctx;
  void* stream = nullptr;
  Call(const std::string& dev, const std::string& dt, int threads)
      : device(parse_device(dev)), dtype(parse_dtype(dt)), arena(device) {
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
  Tensor in(const F32Array& a) {
    Tensor host{const_cast<float*>(a.data()), DType::f32, Device::cpu, shape_of(a)};
    Tensor t = arena.alloc(host.shape, dtype);
    ops::copy(ctx, host, t);
    return t;
  }
  Tensor in_opt(const py::object& o) { return o.is_none() ? Tensor{} : in(o.cast<F32Array>()); }
  Tensor out(std::vector<int64_t> shape, DType dt) { return arena.alloc(std::move(shape), dt); }
  Tensor out(std::vector<int64_t> shape) { return out(std::move(shape), dtype); }
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
  py::array_t<float> back(const Tensor& t) {
    device_synchronize(device, ctx.stream);
    py::array_t<float> r(t.shape);
    Tensor host{r.mutable_data(), DType::f32, Device::cpu, t.shape};
    ops::copy(ctx, t, host);
    device_synchronize(device, ctx.stream);
    return r;
  }
};

ops::Epilogue parse_epilogue(const std::string& s) {
  if (s == "none") return ops::Epilogue::none;
  if (s == "gelu_tanh") return ops::Epilogue::gelu_tanh;
  if (s == "gated_residual") return ops::Epilogue::gated_residual;
  throw py::value_error("epilogue must be 'none', 'gelu_tanh' or 'gated_residual', got '" + s + "'");
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
#define NFD_DEV py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("threads") = 0

  m.def("linear", [](F32Array x, F32Array w, py::object b, const std::string& epilogue, py::object gate,
                     py::object y, const std::string& device, const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), tw = c.in(w), tb = c.in_opt(b), tg = c.in_opt(gate);
    ops::Epilogue e = parse_epilogue(epilogue);
    Tensor ty = y.is_none() ? c.out({tx.dim(0), tw.dim(0)}) : c.in(y.cast<F32Array>());
    c.run([&] { ops::linear(c.ctx, tx, tw, tb, ty, e, tg.defined() ? &tg : nullptr); });
    return c.back(ty);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("epilogue") = "none",
     py::arg("gate") = py::none(), py::arg("y") = py::none(), NFD_DEV);

  m.def("layernorm_modulate", [](F32Array x, F32Array shift, F32Array scale, float eps, const std::string& device,
                                 const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), ts = c.in(shift), tc = c.in(scale), to = c.out(tx.shape);
    c.run([&] { ops::layernorm_modulate(c.ctx, tx, ts, tc, eps, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("eps") = 1e-6f, NFD_DEV);

  m.def("add_silu", [](F32Array a, F32Array b, const std::string& device, const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    Tensor ta = c.in(a), tb = c.in(b), to = c.out(ta.shape);
    c.run([&] { ops::add_silu(c.ctx, ta, tb, to); });
    return c.back(to);
  }, py::arg("a"), py::arg("b"), NFD_DEV);

  m.def("rope_qkv_split", [](F32Array qkv, int frame_index, std::vector<int> rope_dims, double theta, int grid_cols,
                             int heads, const std::string& device, const std::string& dtype, int threads) {
    if (rope_dims.size() != 3) throw py::value_error("rope_dims must have 3 entries");
    if (qkv.ndim() != 2 || heads <= 0 || qkv.shape(1) % (3 * heads)) throw py::value_error("qkv must be [N, 3*heads*hd]");
    Call c(device, dtype, threads);
    FrameState st{};
    st.frame_index = frame_index;
    st.write_slot = 0;
    c.set_state(st);
    const int64_t N = qkv.shape(0), hd = qkv.shape(1) / (3 * heads);
    Tensor tq = c.in(qkv), q = c.out({heads, N, hd}), k = c.out({1, N, heads, hd}), v = c.out({1, N, heads, hd});
    ops::RopeParams rp{{rope_dims[0], rope_dims[1], rope_dims[2]}, theta, grid_cols};
    c.run([&] { ops::rope_qkv_split(c.ctx, tq, rp, q, k, v); });
    k.shape.erase(k.shape.begin());
    v.shape.erase(v.shape.begin());
    return py::make_tuple(c.back(q), c.back(k), c.back(v));
  }, py::arg("qkv"), py::arg("frame_index"), py::arg("rope_dims"), py::arg("theta"), py::arg("grid_cols"),
     py::arg("heads"), NFD_DEV);

  m.def("attention", [](F32Array q, F32Array k_cache, F32Array v_cache, std::vector<int> visible_slots,
                        const std::string& device, const std::string& dtype, int threads) {
    if (visible_slots.empty() || visible_slots.size() > size_t(FrameState::kMaxSlots))
      throw py::value_error("visible_slots must hold 1.." + std::to_string(FrameState::kMaxSlots) + " slots");
    Call c(device, dtype, threads);
    FrameState st{};
    st.num_visible = int(visible_slots.size());
    for (size_t i = 0; i < visible_slots.size(); ++i) st.visible_slots[i] = visible_slots[i];
    c.set_state(st);
    Tensor tq = c.in(q), tk = c.in(k_cache), tv = c.in(v_cache);
    if (tq.rank() != 3) throw py::value_error("q must be [H, N, hd]");
    Tensor to = c.out({tq.dim(1), tq.dim(0) * tq.dim(2)});
    c.run([&] { ops::attention(c.ctx, tq, tk, tv, to); });
    return c.back(to);
  }, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("visible_slots"), NFD_DEV);

  m.def("patchify", [](F32Array latent, int patch, const std::string& device, const std::string& dtype, int threads) {
    if (latent.ndim() != 3 || patch <= 0) throw py::value_error("latent must be [C, h, w] and patch > 0");
    Call c(device, dtype, threads);
    Tensor tl = c.in(latent);
    Tensor tt = c.out({(tl.dim(1) / patch) * (tl.dim(2) / patch), tl.dim(0) * patch * patch});
    c.run([&] { ops::patchify(c.ctx, tl, patch, tt); });
    return c.back(tt);
  }, py::arg("latent"), py::arg("patch"), NFD_DEV);

  m.def("unpatchify_axpy", [](F32Array tokens, int patch, float dt, F32Array latent, const std::string& device,
                              const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    Tensor tt = c.in(tokens), tl = c.in(latent);
    c.run([&] { ops::unpatchify_axpy(c.ctx, tt, patch, dt, tl); });
    return c.back(tl);
  }, py::arg("tokens"), py::arg("patch"), py::arg("dt"), py::arg("latent"), NFD_DEV);

  m.def("noise_mix", [](uint64_t seed, int frame, int step, float a, py::object x, float b, std::vector<int64_t> shape,
                        const std::string& device, const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    FrameState st{};
    st.frame_index = frame;
    c.set_state(st);
    Tensor tx = c.in_opt(x);
    Tensor to = c.out(tx.defined() ? tx.shape : shape);
    c.run([&] { ops::noise_mix(c.ctx, seed, step, a, tx, b, to); });
    return c.back(to);
  }, py::arg("seed"), py::arg("frame"), py::arg("step"), py::arg("a") = 0.f, py::arg("x") = py::none(),
     py::arg("b") = 1.f, py::arg("shape") = std::vector<int64_t>{}, NFD_DEV);

  m.def("noise", [](uint64_t seed, int frame, int step, int64_t count, const std::string& device, int threads) {
    Call c(device, "float32", threads);
    FrameState st{};
    st.frame_index = frame;
    c.set_state(st);
    Tensor to = c.out({count});
    c.run([&] { ops::noise_mix(c.ctx, seed, step, 0.f, Tensor{}, 1.f, to); });
    return c.back(to);
  }, py::arg("seed"), py::arg("frame"), py::arg("step"), py::arg("count"), py::arg("device") = "cpu",
     py::arg("threads") = 0);

  m.def("conv2d", [](F32Array x, F32Array w, py::object b, int stride, int pad, py::object residual,
                     const std::string& device, const std::string& dtype, int threads) {
    if (x.ndim() != 3 || w.ndim() != 4 || stride < 1) throw py::value_error("x must be [C,H,W], w [Co,Ci,k,k], stride >= 1");
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), tw = c.in(w), tb = c.in_opt(b), tr = c.in_opt(residual);
    const int64_t k = tw.dim(2);
    Tensor to = c.out({tw.dim(0), (tx.dim(1) + 2 * pad - k) / stride + 1, (tx.dim(2) + 2 * pad - k) / stride + 1});
    c.run([&] { ops::conv2d(c.ctx, tx, tw, tb, stride, pad, to, tr.defined() ? &tr : nullptr); });
    return c.back(to);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("stride") = 1, py::arg("pad") = 0,
     py::arg("residual") = py::none(), NFD_DEV);

  m.def("upsample2x_conv2d", [](F32Array x, F32Array w, py::object b, const std::string& device,
                                const std::string& dtype, int threads) {
    if (x.ndim() != 3 || w.ndim() != 4) throw py::value_error("x must be [C,H,W], w [Co,Ci,3,3]");
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), tw = c.in(w), tb = c.in_opt(b);
    Tensor to = c.out({tw.dim(0), 2 * tx.dim(1), 2 * tx.dim(2)});
    c.run([&] { ops::upsample2x_conv2d(c.ctx, tx, tw, tb, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), NFD_DEV);

  m.def("groupnorm", [](F32Array x, F32Array gamma, F32Array beta, int groups, float eps, bool silu,
                        const std::string& device, const std::string& dtype, int threads) {
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), tg = c.in(gamma), tb = c.in(beta), to = c.out(tx.shape);
    c.run([&] { ops::groupnorm(c.ctx, tx, tg, tb, groups, eps, silu, to); });
    return c.back(to);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("groups"), py::arg("eps") = 1e-6f,
     py::arg("silu") = false, NFD_DEV);

  m.def("upsample_nearest2x", [](F32Array x, const std::string& device, const std::string& dtype, int threads) {
    if (x.ndim() != 3) throw py::value_error("x must be [C, H, W]");
    Call c(device, dtype, threads);
    Tensor tx = c.in(x), to = c.out({tx.dim(0), 2 * tx.dim(1), 2 * tx.dim(2)});
    c.run([&] { ops::upsample_nearest2x(c.ctx, tx, to); });
    return c.back(to);
  }, py::arg("x"), NFD_DEV);

  m.def("to_uint8", [](F32Array image, const std::string& device, const std::string& dtype, int threads) {
    if (image.ndim() != 3) throw py::value_error("image must be [3, H, W]");
    Call c(device, dtype, threads);
    Tensor ti = c.in(image), to = c.out({ti.dim(1), ti.dim(2), 3}, DType::u8);
    c.run([&] { ops::to_uint8(c.ctx, ti, to); });
    device_synchronize(c.device, c.ctx.stream);
    py::array_t<uint8_t> r(to.shape);
    device_memcpy(r.mutable_data(), Device::cpu, to.data, c.device, to.bytes(), c.ctx.stream);
    return r;
  }, py::arg("image"), NFD_DEV);

  m.def("from_uint8", [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> frame,
                         const std::string& device, const std::string& dtype, int threads) {
    if (frame.ndim() != 3 || frame.shape(2) != 3) throw py::value_error("frame must be uint8 [H, W, 3]");
    Call c(device, dtype, threads);
    Tensor tf = c.out(shape_of(frame), DType::u8);
    device_memcpy(tf.data, c.device, frame.data(), Device::cpu, tf.bytes(), c.ctx.stream);
    Tensor to = c.out({3, tf.dim(0), tf.dim(1)});
    c.run([&] { ops::from_uint8(c.ctx, tf, to); });
    return c.back(to);
  }, py::arg("frame"), NFD_DEV);
#undef NFD_DEV
}
