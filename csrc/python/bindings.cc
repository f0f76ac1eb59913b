// nfd_rt._core: the pybind11 module. Thin: python/nfd_rt/session.py does the user-facing validation (shared with
// ReferenceSession through _checks.py); this layer still checks dtype/shape/contiguity of every buffer it hands
// to C++, so the extension cannot be made to read out of bounds from Python either.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cpu/device_cpu.h"
#include "backends/cpu/onednn.h"
#include "backends/device.h"
#include "core/config_json.h"
#include "core/error.h"
#include "model/architecture.h"
#include "runtime/kv_ring.h"
#include "runtime/loader.h"
#include "runtime/session.h"
#include "runtime/snapshot.h"
#include "ops/cpu_common.h"
#include "ops/kernel_report.h"
#include "ops/scratch_bound.h"
#include "nfd_rt/nfd_rt.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace {

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

// nfd_rt._core.NFDFormatError (re-exported as nfd_rt.export.NFDFormatError, so `except NFDFormatError` catches
// loader errors from both the Python header reader and the C++ loader): a ValueError subclass made at import.
// Leaked on purpose: no destructor at exit.
PyObject* g_format_error = nullptr;
PyObject* format_error_class() { return g_format_error ? g_format_error : PyExc_ValueError; }

// Sets a Python exception; a message holding bytes from a hostile file that are not UTF-8 is still delivered.
void set_error(PyObject* cls, const std::string& msg) {
  PyObject* text = PyUnicode_DecodeUTF8(msg.data(), Py_ssize_t(msg.size()), "backslashreplace");
  if (!text) {
    PyErr_Clear();
    PyErr_SetString(cls, "nfd_rt error (message not decodable)");
    return;
  }
  PyErr_SetObject(cls, text);
  Py_DECREF(text);
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks dtype `T`, C-contiguity and shape (a -1 entry matches any size); returns the data pointer.
template <typename T>
const T* checked(const py::array& a, const std::vector<py::ssize_t>& shape, const char* what) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
    value_error(std::string(what) + " must have dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) value_error(std::string(what) + " must be C-contiguous");
  bool ok = a.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? "T" : std::to_string(shape[i]));
    value_error(std::string(what) + " must have shape " + want + (shape.size() == 1 ? ",)" : ")") + ", got " +
                shape_str(a));
  }
  return static_cast<const T*>(a.data());
}

// A dtype the device does not compute in is bad input to a Python caller: ValueError, as the README promises. (The C
// ABI keeps NFD_ERROR_UNSUPPORTED for it, as nfd_rt.h documents.)
void check_dtype_for_device(nfd::Device device, nfd::DType dtype) {
  try {
    nfd::check_device_options(device, dtype, 0, false);
  } catch (const nfd::Error& e) {
    if (e.kind() == nfd::ErrorKind::unsupported) value_error(e.what());
    throw;
  }
}

nfd::SessionOptions session_options(const std::string& device, const std::string& dtype, int threads) {
  nfd::SessionOptions o;
  o.device = nfd::parse_device(device);
  o.dtype = dtype == "auto" ? nfd::default_dtype(o.device) : nfd::parse_dtype(dtype);
  check_dtype_for_device(o.device, o.dtype);
  o.threads = threads;
  return o;
}

nfd::SpeculateMode parse_speculate_mode(const std::string& s) {
  if (s == "exact") return nfd::SpeculateMode::exact;
  if (s == "parallel") return nfd::SpeculateMode::parallel;
  value_error("speculate_mode must be 'exact' or 'parallel', got '" + s + "'");
}

// A snapshot blob from Python: any C-contiguous bytes-like object (bytes, bytearray, memoryview, numpy uint8),
// held (and readable with the GIL released) for the object's lifetime. None: no snapshot.
class BlobArg {
 public:
  explicit BlobArg(const py::object& obj) {
    if (obj.is_none()) return;
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_SIMPLE) != 0) {
      PyErr_Clear();
      value_error("snapshot must be a bytes-like object (from Session.snapshot()), got " +
                  std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
    held_ = true;
  }
  ~BlobArg() {
    if (held_) PyBuffer_Release(&view_);
  }
  BlobArg(const BlobArg&) = delete;
  BlobArg& operator=(const BlobArg&) = delete;
  bool given() const { return held_; }
  const void* data() const { return view_.buf; }
  size_t size() const { return size_t(view_.len); }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

// The Python-visible model: weights loaded once, shared by the sessions made from it.
class PyModel {
 public:
  PyModel(const std::string& path, const std::string& device, const std::string& dtype, int threads,
          uint64_t max_memory_bytes) {
    nfd::ModelOptions o;
    o.device = nfd::parse_device(device);
    o.dtype = dtype == "auto" ? nfd::default_dtype(o.device) : nfd::parse_dtype(dtype);
    check_dtype_for_device(o.device, o.dtype);
    o.threads = threads;
    o.max_memory_bytes = max_memory_bytes;
    py::gil_scoped_release nogil;
    m_ = nfd::Model::load(path, o);
  }
  const std::shared_ptr<nfd::Model>& get() const { return m_; }

 private:
  std::shared_ptr<nfd::Model> m_;
};

// The Python-visible session: the C++ session plus a lock, so that threads calling it with the GIL released
// cannot race; close() frees everything immediately.
class PySession {
 public:
  PySession(const std::string& path, const std::string& device, const std::string& dtype, uint64_t seed,
            int threads, bool cuda_graphs, uint64_t max_memory_bytes, int speculate,
            const std::string& speculate_mode, const py::object& snapshot) {
    nfd::SessionOptions o = session_options(device, dtype, threads);
    o.seed = seed;
    o.cuda_graphs = cuda_graphs;
    o.max_memory_bytes = max_memory_bytes;
    o.speculate = speculate;
    o.speculate_mode = parse_speculate_mode(speculate_mode);
    BlobArg blob(snapshot);
    py::gil_scoped_release nogil;
    s_ = blob.given() ? std::make_unique<nfd::Session>(path, o, blob.data(), blob.size())
                      : std::make_unique<nfd::Session>(path, o);
    cfg_ = s_->config();
  }
  PySession(const PyModel& model, uint64_t seed, int threads, bool cuda_graphs, uint64_t max_memory_bytes,
            int speculate, const std::string& speculate_mode, const py::object& snapshot) {
    nfd::SessionOptions o;
    o.seed = seed;
    o.threads = threads;
    o.cuda_graphs = cuda_graphs;
    o.max_memory_bytes = max_memory_bytes;
    o.speculate = speculate;
    o.speculate_mode = parse_speculate_mode(speculate_mode);
    BlobArg blob(snapshot);
    py::gil_scoped_release nogil;
    s_ = blob.given() ? std::make_unique<nfd::Session>(model.get(), o, blob.data(), blob.size())
                      : std::make_unique<nfd::Session>(model.get(), o);
    cfg_ = s_->config();
  }
  explicit PySession(std::unique_ptr<nfd::Session> s) : s_(std::move(s)), cfg_(s_->config()) {}

  const nfd::Config& cfg() const { return cfg_; }

  std::unique_ptr<PySession> fork() {
    std::unique_ptr<nfd::Session> copy;
    run([&](nfd::Session& s) { copy = s.fork(); });
    return std::make_unique<PySession>(std::move(copy));
  }

  // The snapshot as a bytes object, written in place (no second copy of a blob that may be a GiB). The session's
  // lock is held from the size to the write, so no other thread changes the state in between; the GIL is released
  // around the C++ calls (threads waiting for the lock never hold the GIL).
  py::bytes snapshot() {
    std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
    size_t size = 0;
    {
      py::gil_scoped_release nogil;
      lock.lock();
      if (!s_) throw std::runtime_error("session is closed");
      size = s_->snapshot_size();
    }
    PyObject* bytes = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(size));
    if (!bytes) throw py::error_already_set();
    py::bytes out = py::reinterpret_steal<py::bytes>(bytes);
    {
      py::gil_scoped_release nogil;
      s_->snapshot(PyBytes_AS_STRING(bytes), size);
    }
    return out;
  }

  py::dict speculation_stats() {
    nfd::Session::SpeculationStats st;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!s_) throw std::runtime_error("session is closed");
      st = s_->speculation_stats();
    }
    py::dict d;
    d["served"] = st.served;
    d["discarded"] = st.discarded;
    return d;
  }

  // Steps several sessions of one model as one batched forward (Session::step_batch). Their locks are taken in
  // address order, so concurrent batches over overlapping sessions cannot deadlock.
  static py::tuple step_batch(const std::vector<PySession*>& sessions, const py::array& actions, bool decode) {
    if (sessions.empty()) value_error("step_batch: no sessions");
    for (size_t i = 0; i < sessions.size(); ++i)
      if (!sessions[i]) value_error("step_batch: session " + std::to_string(i) + " is None");
    const nfd::Config& cfg = sessions[0]->cfg_;
    const int64_t n = int64_t(sessions.size());
    const float* a = checked<float>(actions, {n, cfg.action_dim}, "actions");
    py::array_t<float> latents({n, int64_t(cfg.latent_channels), int64_t(cfg.latent_height()),
                                int64_t(cfg.latent_width())});
    py::object frames = py::none();
    uint8_t* fp = nullptr;
    if (decode) {
      std::vector<int64_t> shape = cfg.frame_shape();
      shape.insert(shape.begin(), n);
      py::array_t<uint8_t> f(shape);
      fp = f.mutable_data();
      frames = f;
    }
    float* lp = latents.mutable_data();
    {
      py::gil_scoped_release nogil;
      std::vector<PySession*> order(sessions.begin(), sessions.end());
      std::sort(order.begin(), order.end());
      order.erase(std::unique(order.begin(), order.end()), order.end());
      std::vector<std::unique_lock<std::mutex>> locks;
      for (PySession* s : order) locks.emplace_back(s->mu_);
      std::vector<nfd::Session*> list;
      for (size_t i = 0; i < sessions.size(); ++i) {
        if (!sessions[i]->s_) throw nfd::Error(nfd::ErrorKind::invalid_argument,
                                               "step_batch: session " + std::to_string(i) + " is closed");
        list.push_back(sessions[i]->s_.get());
      }
      nfd::Session::step_batch(list, a, fp, lp);
    }
    return py::make_tuple(latents, frames);
  }

  // Runs `fn` on the session with the GIL released (the numpy buffers stay alive: the caller holds them).
  template <typename Fn>
  void run(Fn&& fn) {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    if (!s_) throw std::runtime_error("session is closed");
    fn(*s_);
  }
  template <typename Fn>
  auto query(Fn&& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!s_) throw std::runtime_error("session is closed");
    return fn(*s_);
  }


  // frames: T video frames, T a multiple of frames_per_step; actions: one per latent (T / frames_per_step).
  void reset_frames(const py::array& frames, const py::object& actions) {
    const auto* f = checked<uint8_t>(frames, {-1, cfg_.frame_height, cfg_.frame_width, 3}, "frames");
    int count = int(frames.shape(0));
    if (count % cfg_.frames_per_step)
      value_error("frames: " + std::to_string(count) + " frames is not a multiple of " +
                  std::to_string(cfg_.frames_per_step) + " (the frames of one latent)");
    const float* a = actions_ptr(actions, count / cfg_.frames_per_step);
    run([&](nfd::Session& s) { s.reset_frames(f, count, a); });
  }

  void reset_latents(const py::array& latents, const py::object& actions) {
    const auto* z = checked<float>(
        latents, {-1, cfg_.latent_channels, cfg_.latent_height(), cfg_.latent_width()}, "latents");
    int count = int(latents.shape(0));
    const float* a = actions_ptr(actions, count);
    run([&](nfd::Session& s) { s.reset_latents(z, count, a); });
  }

  py::tuple step(const py::array& action, bool decode) {
    const float* a = checked<float>(action, {cfg_.action_dim}, "action");
    py::array_t<float> latent({cfg_.latent_channels, cfg_.latent_height(), cfg_.latent_width()});
    py::object frame = py::none();
    uint8_t* fp = nullptr;
    if (decode) {
      py::array_t<uint8_t> f(cfg_.frame_shape());
      fp = f.mutable_data();
      frame = f;
    }
    float* lp = latent.mutable_data();
    run([&](nfd::Session& s) { s.step(a, fp, lp); });
    return py::make_tuple(latent, frame);
  }

  py::array decode(const py::array& latent) {
    const float* z =
        checked<float>(latent, {cfg_.latent_channels, cfg_.latent_height(), cfg_.latent_width()}, "latent");
    py::array_t<uint8_t> frame(cfg_.frame_shape());
    uint8_t* fp = frame.mutable_data();
    run([&](nfd::Session& s) { s.decode(z, fp); });
    return std::move(frame);
  }

  int64_t frame_index() { return query([](nfd::Session& s) { return s.frame_index(); }); }
  uint64_t seed() { return query([](nfd::Session& s) { return s.options().seed; }); }
  size_t memory_bytes() { return query([](nfd::Session& s) { return s.memory_bytes(); }); }
  size_t kv_cache_bytes() { return query([](nfd::Session& s) { return s.kv_cache_bytes(); }); }
  std::string device() {
    return query([](nfd::Session& s) { return std::string(nfd::device_name(s.options().device)); });
  }

  void close() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    s_.reset();
  }
  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !s_;
  }

 private:
  const float* actions_ptr(const py::object& actions, int count) {
    if (actions.is_none()) return nullptr;
    return checked<float>(py::cast<py::array>(actions), {count, cfg_.action_dim}, "actions");
  }

  std::unique_ptr<nfd::Session> s_;
  nfd::Config cfg_;
  std::mutex mu_;
};

py::dict describe(const nfd::ModelLoader& loader) {
  const nfd::ModelFile& f = loader.file();
  py::dict tensors;
  for (const auto& [name, t] : f.tensors()) {
    py::dict e;
    e["dtype"] = "F32";
    e["shape"] = py::cast(t.shape);
    e["data_offsets"] = py::make_tuple(t.begin, t.end);
    tensors[py::str(name)] = e;
  }
  py::dict out;
  out["format_version"] = nfd::kFormatVersion;
  out["config"] = nfd::config_to_json(loader.config());
  out["tensors"] = tensors;
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "nfd_rt C++ runtime (see python/nfd_rt/session.py for the user-facing API)";
  g_format_error = PyErr_NewExceptionWithDoc("nfd_rt._core.NFDFormatError",
                                             "A file is not a valid .nfd file; the message names the first problem "
                                             "found.",
                                             PyExc_ValueError, nullptr);
  if (!g_format_error) throw py::error_already_set();
  m.attr("NFDFormatError") = py::handle(g_format_error);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const nfd::Error& e) {
      switch (e.kind()) {
        case nfd::ErrorKind::invalid_argument: set_error(PyExc_ValueError, e.what()); return;
        case nfd::ErrorKind::invalid_file: set_error(format_error_class(), e.what()); return;
        case nfd::ErrorKind::io: set_error(PyExc_OSError, e.what()); return;
        case nfd::ErrorKind::unsupported: set_error(PyExc_RuntimeError, e.what()); return;
        case nfd::ErrorKind::out_of_memory: set_error(PyExc_MemoryError, e.what()); return;
        case nfd::ErrorKind::internal: set_error(PyExc_RuntimeError, std::string("nfd_rt internal error: ") + e.what());
          return;
      }
    }
  });

  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, const std::string&, const std::string&, int, uint64_t>(), py::arg("path"),
           py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("threads") = 0,
           py::arg("max_memory_bytes") = 0)
      .def_property_readonly("config_json", [](PyModel& mo) { return nfd::config_to_json(mo.get()->config()); })
      .def_property_readonly("device", [](PyModel& mo) { return std::string(nfd::device_name(mo.get()->device())); })
      .def("weight_bytes", [](PyModel& mo) { return mo.get()->weight_bytes(); })
      .def("sessions_alive", [](PyModel& mo) { return mo.get().use_count() - 1; },
           "Sessions (C++ or Python) holding this model's weights.");

  py::class_<PySession>(m, "Session")
      .def(py::init<const std::string&, const std::string&, const std::string&, uint64_t, int, bool, uint64_t, int,
                    const std::string&, const py::object&>(),
           py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("seed") = 0,
           py::arg("threads") = 0, py::arg("cuda_graphs") = true, py::arg("max_memory_bytes") = 0,
           py::arg("speculate") = 0, py::arg("speculate_mode") = "exact", py::arg("snapshot") = py::none())
      .def(py::init<const PyModel&, uint64_t, int, bool, uint64_t, int, const std::string&, const py::object&>(),
           py::arg("model"), py::arg("seed") = 0, py::arg("threads") = 0, py::arg("cuda_graphs") = true,
           py::arg("max_memory_bytes") = 0, py::arg("speculate") = 0, py::arg("speculate_mode") = "exact",
           py::arg("snapshot") = py::none())
      .def("fork", &PySession::fork, "An independent session continuing from this one's state.")
      .def("snapshot", &PySession::snapshot, "The session's state as a snapshot blob (bytes).")
      .def("speculation_stats", &PySession::speculation_stats)
      .def("wait_speculation",
           [](PySession& s) {
             int n = 0;
             s.run([&](nfd::Session& x) { n = x.wait_speculation(); });
             return n;
           },
           "Blocks until the exact-speculation worker has generated every frame it can ahead; returns their number.")
      .def("reset_frames", &PySession::reset_frames, py::arg("frames"), py::arg("actions") = py::none(),
           "frames: uint8 [T, H, W, 3]; actions: float32 [T, action_dim] or None (zeros)")
      .def("reset_latents", &PySession::reset_latents, py::arg("latents"), py::arg("actions") = py::none(),
           "latents: float32 [T, C, h, w]; actions: float32 [T, action_dim] or None (zeros)")
      .def("step", &PySession::step, py::arg("action"), py::arg("decode") = true,
           "action: float32 [action_dim] -> (latent float32 [C, h, w], frame uint8 [H, W, 3] or None)")
      .def("decode", &PySession::decode, py::arg("latent"), "latent float32 [C, h, w] -> uint8 [H, W, 3]")
      .def_property_readonly("config_json", [](PySession& s) { return nfd::config_to_json(s.cfg()); })
      .def_property_readonly("config",
                             [](PySession& s) {
                               return py::module_::import("json").attr("loads")(nfd::config_to_json(s.cfg()));
                             })
      .def_property_readonly("frame_index", &PySession::frame_index)
      .def_property_readonly("seed", &PySession::seed)
      .def_property_readonly("device", &PySession::device)
      .def_property_readonly("closed", &PySession::closed)
      .def("memory_bytes", &PySession::memory_bytes)
      .def("kv_cache_bytes", &PySession::kv_cache_bytes)
      .def("close", &PySession::close);

  m.def("step_batch", &PySession::step_batch, py::arg("sessions"), py::arg("actions"), py::arg("decode") = true,
        "Steps sessions of one model as one batched forward: actions float32 [n, action_dim] -> (latents float32 "
        "[n, C, h, w], frames uint8 [n, H, W, 3] or None).");
  m.def(
      "inspect_file",
      [](const std::string& path) {
        std::unique_ptr<nfd::ModelLoader> f;
        {
          py::gil_scoped_release nogil;
          f = std::make_unique<nfd::ModelLoader>(nfd::ModelLoader::open(path));
        }
        return describe(*f);
      },
      py::arg("path"), "Validate a .nfd file; returns {format_version, config (JSON text), tensors}.");
  m.def(
      "validate_bytes",
      [](const py::bytes& data, const std::string& label) {
        std::string_view view(data);
        // An exact-size private copy: aligned, and an overread past the end is visible to AddressSanitizer.
        std::unique_ptr<uint8_t[]> copy(new uint8_t[view.size() ? view.size() : 1]);
        std::copy(view.begin(), view.end(), copy.get());
        return describe(nfd::ModelLoader::from_memory(copy.get(), view.size(), label));
      },
      py::arg("data"), py::arg("label") = "<bytes>", "Same checks as inspect_file on an in-memory file.");
  m.def(
      "expected_tensors",
      [](const std::string& config_json) {
        const nfd::Config cfg = nfd::parse_config_json(config_json);
        std::vector<std::pair<std::string, std::vector<int64_t>>> out =
            nfd::model::architecture(cfg.architecture).expected_tensors(cfg);
        return out;
      },
      py::arg("config_json"), "[(name, shape)] of every tensor a model with this config has, in state_dict order.");
  m.def(
      "config_roundtrip", [](const std::string& config_json) {
        return nfd::config_to_json(nfd::parse_config_json(config_json));
      },
      py::arg("config_json"), "Parse + validate a config JSON with the C++ parser and write it back.");
  py::class_<nfd::KvRing>(m, "KvRing", "The C++ runtime's KV ring rule (runtime/kv_ring.h), for tests against "
                                        "nfd_rt.ring.")
      .def(py::init<int, int, int, int>(), py::arg("sinks"), py::arg("window"), py::arg("extra") = 0,
           py::arg("stride") = 1)
      .def_property_readonly("slots", &nfd::KvRing::slots)
      .def("slot_for", &nfd::KvRing::slot_for, py::arg("frame"))
      .def("frame_state",
           [](const nfd::KvRing& r, int64_t g) {
             auto st = std::make_unique<nfd::FrameState>();
             r.fill_state(g, *st);
             return py::make_tuple(st->write_slot,
                                   std::vector<int>(st->visible_slots, st->visible_slots + st->num_visible));
           },
           py::arg("frame"), "(write slot, visible slots in frame order, the frame's own last)")
      .def("commit", &nfd::KvRing::commit, py::arg("frame"))
      .def("forget_from", &nfd::KvRing::forget_from, py::arg("first"))
      .def("clear", &nfd::KvRing::clear)
      .def_property_readonly("slot_frame", &nfd::KvRing::slot_frames);
  m.def(
      "snapshot_info",
      [](const py::object& blob) {
        BlobArg b(blob);
        if (!b.given()) value_error("snapshot must be a bytes-like object (from Session.snapshot()), got None");
        nfd::snapshot::Blob opened = nfd::snapshot::open(b.data(), b.size());
        py::dict d = py::module_::import("json").attr("loads")(opened.meta);
        d["format_version"] = nfd::snapshot::kVersion;
        d["size"] = b.size();
        return d;
      },
      py::arg("snapshot"),
      "The metadata of a snapshot blob (a dict) after checking its format (magic, version, size, CRC-32C).");
  m.def(
      "crc32c",
      [](const py::bytes& data, bool software) {
        std::string_view v(data);
        return software ? nfd::snapshot::crc32c_software(v.data(), v.size())
                        : nfd::snapshot::crc32c(v.data(), v.size());
      },
      py::arg("data"), py::arg("software") = false,
      "The CRC-32C (Castagnoli) snapshots end with; software=True: the table-driven fallback (tests).");
  m.def(
      "estimate_memory",
      [](const std::string& path, const std::string& device, const std::string& dtype, int threads, int speculate,
         const std::string& speculate_mode) {
        nfd::MemoryEstimate e;
        {
          nfd::SessionOptions o = session_options(device, dtype, threads);
          o.speculate = speculate;
          o.speculate_mode = parse_speculate_mode(speculate_mode);
          py::gil_scoped_release nogil;
          e = nfd::estimate_session_memory(path, o);
        }
        py::dict d;
        d["device"] = nfd::device_name(e.device);
        d["weights"] = e.weights;
        d["kv_cache"] = e.kv_cache;
        d["activations"] = e.activations;
        d["scratch"] = e.scratch;
        d["total"] = e.total();
        d["snapshot_max"] = e.snapshot;
        d["text"] = e.describe();
        return d;
      },
      py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "auto", py::arg("threads") = 0,
      py::arg("speculate") = 0, py::arg("speculate_mode") = "exact",
      "Bytes a session of this file with these options would allocate (weights, KV cache, activations exactly; "
      "scratch as an upper bound), computed without allocating; the device need not be present. snapshot_max: the largest snapshot "
      "such a session can write (full caches, decoder state, metadata), not part of the total.");
  m.def(
      "available_memory",
      [](const std::string& device) {
        std::string source;
        size_t bytes = nfd::available_memory(nfd::parse_device(device), &source);
        return py::make_tuple(bytes, source);
      },
      py::arg("device") = "cpu", "(bytes a new allocation can count on now, where the figure comes from)");
  m.def("cpu_scratch_bytes", &nfd::ops::cpu_scratch_bytes, "Bytes held by the CPU ops' scratch buffers now.");
  m.def("cpu_scratch_peak_bytes", &nfd::ops::cpu_scratch_peak_bytes,
        "The most bytes the CPU ops' scratch buffers ever held in this process.");
  m.def("built_with_cuda", &nfd::built_with_cuda, "The CUDA backend was compiled in.");
  m.def("cuda_unavailable_reason", &nfd::cuda_unavailable_reason,
        "Why CUDA cannot be used ('built without CUDA', 'no CUDA device', ...); '' when it can.");
  m.def("max_threads", [] { return nfd::kMaxThreads; }, "The largest `threads` a Session accepts.");
  m.def("cuda_available", &nfd::cuda_available, "Built with CUDA and a CUDA device is present.");
  m.def("cuda_device_name", &nfd::cuda_device_name, "Name of the current CUDA device; '' when none.");
  m.def("version", &nfd_version);
  m.def("blas_config", &nfd::cpu::blas_config, "OpenBLAS' build and the kernel set it chose for this CPU.");
  m.def(
      "default_dtype",
      [](const std::string& device) {
        return nfd::default_dtype(nfd::parse_device(device)) == nfd::DType::bf16 ? "bfloat16" : "float32";
      },
      py::arg("device") = "cpu", "What dtype 'auto' means on `device` here: 'bfloat16' or 'float32'.");
  m.def(
      "cpu_bf16",
      [] {
        const nfd::cpu::Bf16Support& s = nfd::cpu::bf16_support();
        py::dict d;
        d["ok"] = s.ok;
        d["isa"] = s.isa;
        d["why"] = s.why;
        d["onednn"] = nfd::cpu::onednn_version();
        return d;
      },
      "Whether the CPU backend computes bf16 here: {ok, isa ('AMX-BF16', 'AVX512-BF16' or ''), why (when not ok), "
      "onednn (oneDNN's version, '' when not built with it)}.");
  m.def("cpu_kernel_level", &nfd::ops::cpu_detail::cpu_kernel_level,
        "Which compiled copy of the CPU kernels runs on this CPU (x86-64-v4 / v3 / baseline).");
  m.def(
      "op_names",
      [] {
        std::vector<std::string> names;
#define NFD_OP(name, params) names.push_back(#name);
#include "ops/ops.def"
#undef NFD_OP
        return names;
      },
      "The runtime's ops, in the order of csrc/ops/ops.def (the one list an op is named in).");
  m.def("op_trace_begin", &nfd::op_trace_begin, "Start counting op calls (by op and output shape).");
  m.def(
      "op_trace_end",
      [] {
        py::list out;
        for (const auto& c : nfd::op_trace_end()) out.append(py::make_tuple(c.op, py::tuple(py::cast(c.out_shape)), c.count));
        return out;
      },
      "Stop counting; returns [(op, output shape, calls)] since op_trace_begin().");
  m.def("kernels_used", &nfd::kernels_used,
        "{op key: implementation} of the ops that choose between kernels (CUDA attention, CUDA linear), as of "
        "their last call in this process, e.g. {'attention bf16 hd64': 'ours: mma.sync ...'}.");
  m.def("clear_kernels_used", &nfd::clear_kernels_used, "Forget what kernels_used() recorded.");
  m.def("cuda_build_info", [] {
    const nfd::CudaBuildInfo b = nfd::cuda_build_info();
    py::dict d;
    d["cuda"] = b.cuda;
    d["flashinfer"] = b.flashinfer;
    d["flashinfer_sm90"] = b.flashinfer_sm90;
    d["cublaslt"] = b.cublaslt;
    d["cublaslt_status"] = b.cublaslt_status;
    d["cudnn"] = b.cudnn;
    d["cudnn_status"] = b.cudnn_status;
    return d;
  }, "What the CUDA backend was built with: {'cuda', 'flashinfer', 'flashinfer_sm90', 'cublaslt', 'cudnn': bool, "
     "'cublaslt_status', "
     "'cudnn_status': str}.");
  m.def("default_threads", &nfd::physical_cores,
        "CPU threads a Session uses with threads=0 (physical cores).");
  py::module_ ops = m.def_submodule("ops", "op-level bindings (tests, benchmarks)");
  nfd_register_ops(ops);
}
