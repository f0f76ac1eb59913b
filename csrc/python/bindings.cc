// TEMPORARY module definition for the CPU-backend branch: the api engineer owns csrc/python/bindings.cc and
// replaces this file at merge (keeping `nfd_register_ops(m.def_submodule("ops"))`). Only what the CPU tests use.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/error.h"
#include "core/session.h"

namespace py = pybind11;

void nfd_register_ops(py::module_& m);

PYBIND11_MODULE(_core, m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const nfd::Error& e) {
      if (e.kind() == nfd::ErrorKind::invalid_argument) {
        PyErr_SetString(PyExc_ValueError, e.what());
      } else {
        PyErr_SetString(PyExc_RuntimeError, e.what());
      }
    }
  });
  py::module_ ops = m.def_submodule("ops");
  nfd_register_ops(ops);

  using nfd::Session;
  py::class_<Session>(m, "Session")
      .def(py::init([](const std::string& path, const std::string& device, uint64_t seed, int threads) {
             nfd::SessionOptions o;
             if (device == "cuda") o.device = nfd::Device::cuda;
             else if (device != "cpu") throw py::value_error("device must be 'cpu' or 'cuda'");
             o.seed = seed;
             o.threads = threads;
             py::gil_scoped_release release;
             return std::make_unique<Session>(path, o);
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("seed") = 0, py::arg("threads") = 0)
      .def_property_readonly("frame_index", &Session::frame_index)
      .def("memory_bytes", &Session::memory_bytes)
      .def("kv_cache_bytes", &Session::kv_cache_bytes)
      .def("step_latent", [](Session& s, py::array_t<float, py::array::c_style | py::array::forcecast> a) {
        const auto& c = s.config();
        if (a.size() != c.action_dim) throw py::value_error("action must have action_dim entries");
        py::array_t<float> z({c.latent_channels, c.latent_height(), c.latent_width()});
        float* out = z.mutable_data();
        const float* ap = a.data();
        {
          py::gil_scoped_release release;
          s.step(ap, out, nullptr);
        }
        return z;
      })
      .def("step", [](Session& s, py::array_t<float, py::array::c_style | py::array::forcecast> a) {
        const auto& c = s.config();
        if (a.size() != c.action_dim) throw py::value_error("action must have action_dim entries");
        py::array_t<float> z({c.latent_channels, c.latent_height(), c.latent_width()});
        py::array_t<uint8_t> f({c.frame_height, c.frame_width, 3});
        float* zp = z.mutable_data();
        uint8_t* fp = f.mutable_data();
        const float* ap = a.data();
        {
          py::gil_scoped_release release;
          s.step(ap, zp, fp);
        }
        return py::make_tuple(z, f);
      })
      .def("decode", [](Session& s, py::array_t<float, py::array::c_style | py::array::forcecast> z) {
        const auto& c = s.config();
        if (z.size() != c.latent_numel()) throw py::value_error("latent must be [C, h, w]");
        py::array_t<uint8_t> f({c.frame_height, c.frame_width, 3});
        s.decode(z.data(), f.mutable_data());
        return f;
      })
      .def("reset_frames", [](Session& s, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> frames,
                              py::object actions) {
        const auto& c = s.config();
        int count = frames.ndim() == 4 ? int(frames.shape(0)) : -1;
        if (count < 0 || frames.shape(1) != c.frame_height || frames.shape(2) != c.frame_width || frames.shape(3) != 3)
          throw py::value_error("frames must be uint8 [T, H, W, 3]");
        py::array_t<float, py::array::c_style | py::array::forcecast> a;
        const float* ap = nullptr;
        if (!actions.is_none()) {
          a = actions.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
          if (a.size() != int64_t(count) * c.action_dim) throw py::value_error("actions must be [T, action_dim]");
          ap = a.data();
        }
        s.reset_frames(frames.data(), count, ap);
      }, py::arg("frames"), py::arg("actions") = py::none())
      .def("reset_latents", [](Session& s, py::array_t<float, py::array::c_style | py::array::forcecast> z,
                               py::object actions) {
        const auto& c = s.config();
        int count = z.ndim() == 4 ? int(z.shape(0)) : -1;
        if (count < 0 || z.size() != int64_t(count) * c.latent_numel()) throw py::value_error("latents must be [T, C, h, w]");
        py::array_t<float, py::array::c_style | py::array::forcecast> a;
        const float* ap = nullptr;
        if (!actions.is_none()) {
          a = actions.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
          if (a.size() != int64_t(count) * c.action_dim) throw py::value_error("actions must be [T, action_dim]");
          ap = a.data();
        }
        s.reset_latents(z.data(), count, ap);
      }, py::arg("latents"), py::arg("actions") = py::none());
}
