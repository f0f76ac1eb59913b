// The C ABI (include/nfd_rt/nfd_rt.h) over nfd::Session. Every entry point catches everything: no exception
// crosses the boundary; errors become an nfd_status plus a thread-local message.
#include "nfd_rt/nfd_rt.h"

#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "core/error.h"
#include "runtime/loader.h"
#include "runtime/session.h"

struct nfd_session {
  std::unique_ptr<nfd::Session> impl;
};
struct nfd_model {
  std::shared_ptr<nfd::Model> impl;
};

namespace {

thread_local std::string g_last_error;

nfd_status status_of(nfd::ErrorKind k) {
  switch (k) {
    case nfd::ErrorKind::invalid_argument: return NFD_ERROR_INVALID_ARGUMENT;
    case nfd::ErrorKind::invalid_file: return NFD_ERROR_INVALID_FILE;
    case nfd::ErrorKind::io: return NFD_ERROR_IO;
    case nfd::ErrorKind::unsupported: return NFD_ERROR_UNSUPPORTED;
    case nfd::ErrorKind::out_of_memory: return NFD_ERROR_OUT_OF_MEMORY;
    case nfd::ErrorKind::internal: return NFD_ERROR_INTERNAL;
  }
  return NFD_ERROR_INTERNAL;
}

nfd_status set_error(nfd_status s, const std::string& msg) {
  try {
    g_last_error = msg;
  } catch (...) {
    g_last_error.clear();
  }
  return s;
}

// Runs `fn`, translating every exception into a status + message.
template <typename Fn>
nfd_status guarded(Fn&& fn) {
  try {
    g_last_error.clear();
    fn();
    return NFD_OK;
  } catch (const nfd::Error& e) {
    return set_error(status_of(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(NFD_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return set_error(NFD_ERROR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return set_error(NFD_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

void require(bool cond, const char* msg) {
  if (!cond) nfd::fail(nfd::ErrorKind::invalid_argument, msg);
}

void require_finite(const float* x, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      nfd::fail(nfd::ErrorKind::invalid_argument,
                std::string(what) + " contains NaN or inf (first at flat index " + std::to_string(i) + ")");
}

}  // namespace

extern "C" {

const char* nfd_version(void) { return NFD_VERSION_STRING; }

const char* nfd_last_error(void) { return g_last_error.c_str(); }

const char* nfd_status_name(nfd_status s) {
  switch (s) {
    case NFD_OK: return "NFD_OK";
    case NFD_ERROR_INVALID_ARGUMENT: return "NFD_ERROR_INVALID_ARGUMENT";
    case NFD_ERROR_INVALID_FILE: return "NFD_ERROR_INVALID_FILE";
    case NFD_ERROR_IO: return "NFD_ERROR_IO";
    case NFD_ERROR_UNSUPPORTED: return "NFD_ERROR_UNSUPPORTED";
    case NFD_ERROR_OUT_OF_MEMORY: return "NFD_ERROR_OUT_OF_MEMORY";
    case NFD_ERROR_INTERNAL: return "NFD_ERROR_INTERNAL";
  }
  return "unknown nfd_status";
}

nfd_session_params nfd_session_default_params(void) {
  nfd_session_params p;
  p.device = NFD_DEVICE_CPU;
  p.dtype = NFD_DTYPE_AUTO;
  p.seed = 0;
  p.threads = 0;
  p.cuda_graphs = 1;
  p.max_memory_bytes = 0;
  p.speculate = 0;
  p.speculate_mode = NFD_SPECULATE_EXACT;
  return p;
}

nfd_status nfd_model_validate(const char* path) {
  return guarded([&] {
    require(path != nullptr, "nfd_model_validate: path is NULL");
    nfd::ModelLoader::open(path);
  });
}

namespace {
nfd::SessionOptions session_options(const nfd_session_params* params) {
  nfd_session_params p = params ? *params : nfd_session_default_params();
  nfd::SessionOptions o;
  switch (p.device) {
    case NFD_DEVICE_CPU: o.device = nfd::Device::cpu; break;
    case NFD_DEVICE_CUDA: o.device = nfd::Device::cuda; break;
    default: require(false, "params->device is not an nfd_device value");
  }
  switch (p.dtype) {
    case NFD_DTYPE_F32: o.dtype = nfd::DType::f32; break;
    case NFD_DTYPE_BF16: o.dtype = nfd::DType::bf16; break;
    case NFD_DTYPE_F16: o.dtype = nfd::DType::f16; break;
    case NFD_DTYPE_AUTO: o.dtype = nfd::default_dtype(o.device); break;
    default: require(false, "params->dtype is not an nfd_dtype value");
  }
  o.seed = p.seed;
  o.threads = p.threads;
  o.cuda_graphs = p.cuda_graphs != 0;
  o.max_memory_bytes = p.max_memory_bytes;
  o.speculate = p.speculate;
  switch (p.speculate_mode) {
    case NFD_SPECULATE_EXACT: o.speculate_mode = nfd::SpeculateMode::exact; break;
    case NFD_SPECULATE_PARALLEL: o.speculate_mode = nfd::SpeculateMode::parallel; break;
    default: require(false, "params->speculate_mode is not an nfd_speculate_mode value");
  }
  return o;
}
}  // namespace

nfd_status nfd_session_estimate_memory(const char* path, const nfd_session_params* params, uint64_t* bytes_out) {
  if (bytes_out) *bytes_out = 0;
  return guarded([&] {
    require(path != nullptr, "nfd_session_estimate_memory: path is NULL");
    require(bytes_out != nullptr, "nfd_session_estimate_memory: bytes_out is NULL");
    *bytes_out = nfd::estimate_session_memory(path, session_options(params)).total();
  });
}

nfd_status nfd_session_open(const char* path, const nfd_session_params* params, nfd_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(path != nullptr, "nfd_session_open: path is NULL");
    require(out != nullptr, "nfd_session_open: out is NULL");
    nfd::SessionOptions o = session_options(params);
    auto s = std::make_unique<nfd_session>();
    s->impl = std::make_unique<nfd::Session>(path, o);
    *out = s.release();
  });
}

nfd_status nfd_model_load(const char* path, const nfd_session_params* params, nfd_model** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(path != nullptr, "nfd_model_load: path is NULL");
    require(out != nullptr, "nfd_model_load: out is NULL");
    nfd::SessionOptions o = session_options(params);
    nfd::ModelOptions mo;
    mo.device = o.device;
    mo.dtype = o.dtype;
    mo.threads = o.threads;
    mo.max_memory_bytes = o.max_memory_bytes;
    auto m = std::make_unique<nfd_model>();
    m->impl = nfd::Model::load(path, mo);
    *out = m.release();
  });
}

void nfd_model_free(nfd_model* model) {
  try {
    delete model;  // drops this handle's reference; sessions keep theirs
  } catch (...) {
  }
}

nfd_status nfd_session_create(nfd_model* model, const nfd_session_params* params, nfd_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(model != nullptr, "nfd_session_create: model is NULL");
    require(out != nullptr, "nfd_session_create: out is NULL");
    auto s = std::make_unique<nfd_session>();
    s->impl = std::make_unique<nfd::Session>(model->impl, session_options(params));
    *out = s.release();
  });
}

nfd_status nfd_session_fork(nfd_session* session, nfd_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(session != nullptr, "nfd_session_fork: session is NULL");
    require(out != nullptr, "nfd_session_fork: out is NULL");
    auto s = std::make_unique<nfd_session>();
    s->impl = session->impl->fork();
    *out = s.release();
  });
}

nfd_status nfd_session_snapshot(nfd_session* session, void* buffer, size_t capacity, size_t* size_out) {
  if (size_out) *size_out = 0;
  return guarded([&] {
    require(session != nullptr, "nfd_session_snapshot: session is NULL");
    require(size_out != nullptr, "nfd_session_snapshot: size_out is NULL");
    if (!buffer) {
      *size_out = session->impl->snapshot_size();
      return;
    }
    const size_t need = session->impl->snapshot_size();
    *size_out = need;
    if (capacity < need)
      nfd::fail(nfd::ErrorKind::invalid_argument, "nfd_session_snapshot: the buffer holds " +
                                                      std::to_string(capacity) + " bytes, the snapshot needs " +
                                                      std::to_string(need));
    *size_out = session->impl->snapshot(buffer, capacity);
  });
}

nfd_status nfd_session_create_from_snapshot(nfd_model* model, const nfd_session_params* params,
                                            const void* snapshot, size_t size, nfd_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(model != nullptr, "nfd_session_create_from_snapshot: model is NULL");
    require(out != nullptr, "nfd_session_create_from_snapshot: out is NULL");
    require(snapshot != nullptr || size == 0, "nfd_session_create_from_snapshot: snapshot is NULL");
    auto s = std::make_unique<nfd_session>();
    s->impl = std::make_unique<nfd::Session>(model->impl, session_options(params), snapshot, size);
    *out = s.release();
  });
}

nfd_status nfd_session_open_snapshot(const char* path, const nfd_session_params* params, const void* snapshot,
                                     size_t size, nfd_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(path != nullptr, "nfd_session_open_snapshot: path is NULL");
    require(out != nullptr, "nfd_session_open_snapshot: out is NULL");
    require(snapshot != nullptr || size == 0, "nfd_session_open_snapshot: snapshot is NULL");
    auto s = std::make_unique<nfd_session>();
    s->impl = std::make_unique<nfd::Session>(path, session_options(params), snapshot, size);
    *out = s.release();
  });
}

nfd_status nfd_step_batch(nfd_session* const* sessions, int32_t count, const float* actions, uint8_t* frames_out,
                          float* latents_out) {
  return guarded([&] {
    require(sessions != nullptr, "nfd_step_batch: sessions is NULL");
    require(count > 0, "nfd_step_batch: count must be > 0");
    require(actions != nullptr, "nfd_step_batch: actions is NULL");
    std::vector<nfd::Session*> list;
    for (int32_t i = 0; i < count; ++i) {
      if (!sessions[i]) nfd::fail(nfd::ErrorKind::invalid_argument, "nfd_step_batch: session " + std::to_string(i) + " is NULL");
      list.push_back(sessions[i]->impl.get());
    }
    nfd::Session::step_batch(list, actions, frames_out, latents_out);
  });
}

void nfd_session_close(nfd_session* session) {
  try {
    delete session;
  } catch (...) {  // a destructor should not throw; never let it out
  }
}

nfd_status nfd_session_get_info(const nfd_session* s, nfd_session_info* out) {
  return guarded([&] {
    require(s != nullptr && out != nullptr, "nfd_session_get_info: session and out must not be NULL");
    const nfd::Config& c = s->impl->config();
    out->frame_height = c.frame_height;
    out->frame_width = c.frame_width;
    out->latent_channels = c.latent_channels;
    out->latent_height = c.latent_height();
    out->latent_width = c.latent_width();
    out->action_dim = c.action_dim;
    out->num_steps = c.num_steps();
    out->window = c.window;
    out->sink_frames = c.sink_frames;
    out->frame_index = s->impl->frame_index();
    out->memory_bytes = s->impl->memory_bytes();
    const nfd::Session::SpeculationStats st = s->impl->speculation_stats();
    out->speculated_served = st.served;
    out->speculated_discarded = st.discarded;
    out->frames_per_step = c.frames_per_step;
  });
}

nfd_status nfd_session_reset(nfd_session* s, const uint8_t* frames, int32_t count, const float* actions) {
  return guarded([&] {
    require(s != nullptr, "nfd_session_reset: session is NULL");
    require(count >= 0, "nfd_session_reset: count must be >= 0");
    require(count == 0 || frames != nullptr, "nfd_session_reset: frames is NULL but count > 0");
    if (actions) require_finite(actions, int64_t(count) * s->impl->config().action_dim, "actions");
    s->impl->reset_frames(frames, count, actions);
  });
}

nfd_status nfd_session_reset_latents(nfd_session* s, const float* latents, int32_t count, const float* actions) {
  return guarded([&] {
    require(s != nullptr, "nfd_session_reset_latents: session is NULL");
    require(count >= 0, "nfd_session_reset_latents: count must be >= 0");
    require(count == 0 || latents != nullptr, "nfd_session_reset_latents: latents is NULL but count > 0");
    require_finite(latents, int64_t(count) * s->impl->config().latent_numel(), "latents");
    if (actions) require_finite(actions, int64_t(count) * s->impl->config().action_dim, "actions");
    s->impl->reset_latents(latents, count, actions);
  });
}

nfd_status nfd_session_step(nfd_session* s, const float* action, uint8_t* frame_out, float* latent_out) {
  return guarded([&] {
    require(s != nullptr, "nfd_session_step: session is NULL");
    require(action != nullptr, "nfd_session_step: action is NULL");
    require_finite(action, s->impl->config().action_dim, "action");
    s->impl->step(action, frame_out, latent_out);
  });
}

nfd_status nfd_session_decode(nfd_session* s, const float* latent, uint8_t* frame_out) {
  return guarded([&] {
    require(s != nullptr, "nfd_session_decode: session is NULL");
    require(latent != nullptr && frame_out != nullptr, "nfd_session_decode: latent and frame_out must not be NULL");
    require_finite(latent, s->impl->config().latent_numel(), "latent");
    s->impl->decode(latent, frame_out);
  });
}

}  // extern "C"
