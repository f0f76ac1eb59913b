// nfd::Session: one world's KV ring, activation buffers and sampler over a shared Model; the sampler of
// ReferenceSession (python/nfd_rt/reference/session.py) step for step. This file: opening a session (and its
// memory estimate, before anything is allocated), reset, one frame's device work and host copies, decode, fork.
// Speculation and batched steps are in speculation.cc and batch.cc (runtime/session_impl.h has the map).
#include "runtime/session.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "core/switches.h"
#include "ops/kernel_report.h"
#include "ops/ops.h"
#include "runtime/loader.h"
#include "runtime/session_impl.h"

namespace nfd {

void check_finite(const float* p, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) {
      std::ostringstream s;
      s << what << " contains NaN or inf (first at flat index " << i << ", value " << p[i] << ")";
      fail(ErrorKind::invalid_argument, s.str());
    }
}

std::vector<int> cache_slots(const Config& cfg, const SessionOptions& o) {
  return CacheRings(cfg.cache_policy(), std::max(o.speculate, 0)).slots();
}

IoBuffers::IoBuffers(Arena& arena, const Config& cfg, DType dtype) {
  const std::vector<int64_t> lshape = {cfg.latent_channels, cfg.latent_height(), cfg.latent_width()};
  state = arena.alloc({int64_t(frame_states_bytes(cfg))}, DType::u8);
  action = arena.alloc({cfg.action_dim}, dtype);
  latent = arena.alloc(lshape, dtype);
  write = arena.alloc(lshape, dtype);
  frame = arena.alloc(cfg.frame_shape(), DType::u8);
  if (dtype != DType::f32) {
    action_f32 = arena.alloc({cfg.action_dim}, DType::f32);
    latent_f32 = arena.alloc(lshape, DType::f32);
  }
}

SessionState::SessionState(const Config& cfg, const model::Architecture& arch, const model::Weights& weights,
                           Arena& arena, DType dtype, const std::vector<int>& cache_slots)
    : io(arena, cfg, dtype),
      graph(arch.make_session(cfg, weights, arena, dtype, cache_slots)),
      own(arch.make_activations(cfg, arena, dtype, 1)) {}

PinnedStaging::PinnedStaging(const Config& cfg, int64_t latent_numel, size_t groups)
    : action_off_(align(groups * sizeof(FrameState))),
      latent_off_(action_off_ + align(size_t(cfg.action_dim) * sizeof(float))),
      frame_off_(latent_off_ + align(size_t(latent_numel) * sizeof(float))),
      p_(static_cast<char*>(pinned_host_alloc(frame_off_ + size_t(cfg.frame_bytes())))) {}
PinnedStaging::~PinnedStaging() { pinned_host_free(p_); }

namespace {

void check_session_options(const SessionOptions& o) {
  check_threads(o.threads);
  NFD_CHECK(o.speculate >= 0 && o.speculate <= 64, invalid_argument,
            "speculate must be between 0 (off) and 64 frames ahead, got " + std::to_string(o.speculate));
}

// What a session allocates besides the weights (measured on a measuring arena: exact), plus the ops' scratch.
MemoryEstimate session_part(const Config& cfg, const model::Architecture& arch, const model::Weights& weights,
                            Device device, DType dtype, const SessionOptions& o) {
  Arena arena = Arena::measure(device);
  SessionState st(cfg, arch, weights, arena, dtype, cache_slots(cfg, o));
  const bool parallel = speculates_in_parallel(o);
  if (parallel)  // k frames' buffers besides the own ones
    Session::Impl::Parallel par(cfg, arch, arena, dtype, o.speculate);
  MemoryEstimate m;
  m.device = device;
  m.kv_cache = arena.bytes(Arena::Use::kv_cache);
  m.activations = arena.bytes(Arena::Use::activations);
  m.scratch = arch.scratch_bytes_bound(cfg, device, dtype, effective_threads(o.threads), parallel ? o.speculate : 1);
  m.snapshot = snapshot_size_bound(cfg, *st.graph, dtype);
  return m;
}

// The same and the weights, before the model exists (the weights on a measuring arena).
MemoryEstimate estimate(const ModelLoader& loader, const SessionOptions& o) {
  Arena weights_arena = Arena::measure(o.device);
  Context ctx;
  ctx.device = o.device;
  ctx.threads = effective_threads(o.threads);
  std::unique_ptr<model::Weights> weights = loader.load_weights(weights_arena, ctx, o.dtype);
  MemoryEstimate m = session_part(loader.config(), loader.architecture(), *weights, o.device, o.dtype, o);
  m.weights = weights_arena.bytes();
  return m;
}

}  // namespace

std::string MemoryEstimate::describe() const {
  return format_bytes(double(total())) + " (weights " + format_bytes(double(weights)) + ", KV cache " +
         format_bytes(double(kv_cache)) + ", activations " + format_bytes(double(activations)) + ", scratch " +
         format_bytes(double(scratch)) + ")";
}

MemoryEstimate estimate_session_memory(const std::string& path, const SessionOptions& options) {
  check_device_options(options.device, options.dtype, options.threads, false);
  check_session_options(options);  // measuring arenas only: no device memory, no DeviceScope
  return estimate(ModelLoader::open(path), options);
}

Session::Impl::Impl(std::shared_ptr<const Model> m, const SessionOptions& o, bool fits_checked)
    : model(std::move(m)),
      cfg(model->config()),
      arch(model->architecture()),
      opt(o),
      arena(model->device()),
      host_state(model->config().cache_policy().size()),
      ring(model->config().cache_policy(), std::max(o.speculate, 0)) {
  check_session_options(opt);
  opt.device = model->device();
  opt.dtype = model->dtype();
  if (!fits_checked) {
    MemoryEstimate need = session_part(cfg, arch, model->weights(), opt.device, opt.dtype, opt);
    check_fits(opt.device, need.total(), opt.max_memory_bytes, "opening this session needs " + need.describe());
  }
  ctx.device = opt.device;
  ctx.threads = effective_threads(opt.threads);
  try {
    if (opt.device == Device::cuda) ctx.stream = stream = cuda_stream_create();
    use_graphs = opt.device == Device::cuda && opt.cuda_graphs;
    st = std::make_unique<SessionState>(cfg, arch, model->weights(), arena, opt.dtype, cache_slots(cfg, opt));
    ctx.state = reinterpret_cast<const FrameState*>(st->io.state.data);
    ctx.host_state = host_state.data();  // kernels sized on the host (ops::attention_read_host_state) read it
    st->graph->reset_state(ctx);
    st->graph->prepare_kernels(ctx, st->io.action);
    if (opt.device == Device::cuda) {
      // One decode of a noise latent outside any capture: the decoder's ops choose their engines at a shape's first
      // uncaptured call (ops/conv2d_cuda.cu times CUTLASS against cuDNN), so the frame graph captures the chosen
      // ones, and a decoder with state (it runs outside the graph) does not spend the first frame choosing; its
      // state is then reset, so the first frame's decode starts a fresh stream.
      st->graph->start_latent(ctx, opt.seed, st->io.latent);
      st->graph->decode(ctx, st->io.latent, st->io.frame, nullptr);
      if (st->graph->decoder_keeps_state()) st->graph->reset_state(ctx);
    }
    device_synchronize(opt.device, ctx.stream);
    if (opt.device == Device::cuda) {
      // Each path one switch away from the one measured before it (docs/cuda-backend.md): NFD_RT_DECODE_STREAM=off
      // decodes on the session's stream after the cache-write pass, NFD_RT_PINNED_STAGING=off copies through
      // pageable memory with a wait per copy.
      if (switch_on("NFD_RT_DECODE_STREAM")) decode_stream = cuda_stream_create();
      if (switch_on("NFD_RT_PINNED_STAGING"))
        staging = std::make_unique<PinnedStaging>(cfg, st->io.latent.numel(), ring.groups());
    }
    if (opt.speculate > 0 && opt.speculate_mode == SpeculateMode::exact)
      worker = std::thread([this] { speculate_loop(); });
    if (speculates_in_parallel(opt)) par = std::make_unique<Parallel>(cfg, arch, arena, opt.dtype, opt.speculate);
  } catch (...) {
    release_streams();  // ~Impl does not run for a constructor that throws
    throw;
  }
}

Session::Impl::~Impl() {
  if (worker.joinable()) {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
      cancel = true;
    }
    cv.notify_all();
    worker.join();
  }
  release_streams();
}

void Session::Impl::release_streams() noexcept {
  for (void* s : {decode_stream, stream}) {
    if (!s) continue;
    device_synchronize_quietly(opt.device, s);
    cuda_stream_destroy(s);
  }
  decode_stream = stream = nullptr;
}

FrameJob Session::Impl::job(const Context& c, const Tensor& latent, const Tensor& write, const Tensor& frame) const {
  FrameJob j;
  j.member = model::Member{st->graph.get(), c, latent, write};
  j.action = st->io.action;
  j.frame = frame;
  j.seed = opt.seed;
  return j;
}

void Session::Impl::make_state(int64_t g, FrameState* s, const Tensor& device_state, const Context& c) {
  ring.fill_states(g, s);
  device_memcpy(device_state.data, opt.device, s, Device::cpu, state_bytes(), c.stream);
}

bool Session::Impl::run_frame(bool generate, bool decode, const std::atomic<bool>* cancel) {
  std::vector<FrameJob> frames = {job(ctx, st->io.latent, st->io.write, st->io.frame)};
  SampleOptions so;
  so.generate = generate;
  so.decode = decode;
  so.decode_stream = decode_stream;
  so.cancel = cancel;
  return sample_frames(arch, cfg.num_steps(), frames, *st->own, so);
}

bool Session::Impl::generate_frame(bool decode, const std::atomic<bool>* cancel) {
  if (!use_graphs) return run_frame(true, decode, cancel);
  // A decoder with state between frames runs after the replay, outside the graph (its host-side state advances).
  const bool decode_after = decode && stateful_decoder();
  const bool in_graph = decode && !decode_after;
  CudaGraph& g = graphs.graph[in_graph ? 1 : 0];
  std::vector<int>& visible = graphs.visible[in_graph ? 1 : 0];
  std::vector<int> now;
  for (const FrameState& f : host_state) {  // what a host-sized attention call reads (attention_read_host_state)
    now.push_back(f.num_visible);
    now.push_back(visible_is_prefix(f) ? 1 : 0);
  }
  bool& reads_host_state = graphs.reads_host_state[in_graph ? 1 : 0];
  if (!g.captured() || (reads_host_state && visible != now)) {
    ops::attention_read_host_state(ctx);  // clears what calls before this capture left
    try {
      g.capture(stream, [&] { run_frame(true, in_graph); });
    } catch (const std::exception& e) {
      // Nothing ran (the capture only records, and ended on the error). Out of memory is not about capturing: the
      // uncaptured frame would need the memory too. Any other cause that holds would fail every later capture, so
      // this session steps without graphs from now on (until it is reopened), slower but working; a cause that is
      // not about capturing (a broken context, a bad argument) fails the uncaptured frame as well.
      const auto* error = dynamic_cast<const Error*>(&e);
      if (dynamic_cast<const std::bad_alloc*>(&e) || (error && error->kind() == ErrorKind::out_of_memory)) throw;
      use_graphs = false;
      note_kernel("cuda graph", std::string("off for this session: its capture failed (") + e.what() + ")");
      return run_frame(true, decode, cancel);
    }
    reads_host_state = ops::attention_read_host_state(ctx);
    visible = now;
  }
  g.replay(stream);
  if (decode_after) return st->graph->decode(ctx, st->io.latent, st->io.frame, cancel);
  return true;
}

void Session::Impl::upload_action(const Context& c, const float* action) {
  std::vector<float> zeros;
  if (!action) {
    zeros.assign(size_t(cfg.action_dim), 0.f);
    action = zeros.data();
  }
  Tensor host{const_cast<float*>(action), DType::f32, Device::cpu, {cfg.action_dim}};
  ops::copy(c, host, st->io.action);
}

void Session::Impl::latent_to_host(float* out) {
  Tensor host{out, DType::f32, Device::cpu, st->io.latent.shape};
  ops::copy(ctx, st->io.latent, host);
}

void Session::Impl::frame_to_host(uint8_t* out) {
  device_memcpy(out, Device::cpu, st->io.frame.data, opt.device, st->io.frame.bytes(), ctx.stream);
}

// Generates frame `frame_index` for `action` (host) into the session's buffers and commits it. Copies the
// results out when given. Returns false (nothing committed) when cancelled.
bool Session::Impl::compute_frame(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                                  const std::atomic<bool>* cancel) {
  if (staging) return compute_frame_staged(action, decode, latent_out, frame_out, cancel);
  prepare_state(ctx);
  upload_action(ctx, action);
  if (!generate_frame(decode, cancel)) return false;
  device_synchronize(opt.device, ctx.stream);
  if (latent_out) latent_to_host(latent_out);
  if (frame_out) frame_to_host(frame_out);
  commit_frame();
  return true;
}

// compute_frame on CUDA with one host synchronisation: the FrameState and action go up from page-locked staging
// (16-bit sessions convert the action on the device), the frame runs, the latent (converted on the device) and
// the frame go down into the staging, all ordered on the stream; then one wait, and the results are copied out
// of the staging on the host.
bool Session::Impl::compute_frame_staged(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                                         const std::atomic<bool>* cancel) {
  try {
    return compute_frame_staged_once(action, decode, latent_out, frame_out, cancel);
  } catch (...) {
    // The copies queued before the error may still read or write the staging, which the next step rewrites.
    device_synchronize_quietly(opt.device, ctx.stream);
    throw;
  }
}

bool Session::Impl::compute_frame_staged_once(const float* action, bool decode, float* latent_out,
                                              uint8_t* frame_out, const std::atomic<bool>* cancel) {
  const Device cuda = Device::cuda, cpu = Device::cpu;
  ring.fill_states(frame_index, host_state.data());
  std::copy(host_state.begin(), host_state.end(), staging->state());
  device_memcpy_async(st->io.state.data, cuda, staging->state(), cpu, state_bytes(), ctx.stream);
  const size_t A = size_t(cfg.action_dim);
  if (action) std::memcpy(staging->action(), action, A * sizeof(float));
  else std::fill(staging->action(), staging->action() + A, 0.f);
  const bool f32 = !st->io.action_f32.defined();
  device_memcpy_async(f32 ? st->io.action.data : st->io.action_f32.data, cuda, staging->action(), cpu,
                      A * sizeof(float), ctx.stream);
  if (!f32) ops::copy(ctx, st->io.action_f32, st->io.action);  // device to device: converts, does not wait
  if (!generate_frame(decode, cancel)) {
    device_synchronize(opt.device, ctx.stream);  // the staged inputs must be read before they are reused
    return false;
  }
  const size_t latent_bytes = size_t(st->io.latent.numel()) * sizeof(float);
  if (latent_out) {
    if (!f32) ops::copy(ctx, st->io.latent, st->io.latent_f32);
    device_memcpy_async(staging->latent(), cpu, f32 ? st->io.latent.data : st->io.latent_f32.data, cuda,
                        latent_bytes, ctx.stream);
  }
  if (frame_out) device_memcpy_async(staging->frame(), cpu, st->io.frame.data, cuda, st->io.frame.bytes(), ctx.stream);
  device_synchronize(opt.device, ctx.stream);
  if (latent_out) std::memcpy(latent_out, staging->latent(), latent_bytes);
  if (frame_out) std::memcpy(frame_out, staging->frame(), st->io.frame.bytes());
  commit_frame();
  return true;
}

void Session::Impl::step(const float* action, uint8_t* frame_out, float* latent_out) {
  if (par) return step_parallel(action, frame_out, latent_out);
  if (!speculating()) {
    compute_frame(action, frame_out != nullptr, latent_out, frame_out);
    served_index = frame_index;
    return;
  }
  step_speculating(action, frame_out, latent_out);
}

// Forgets everything (frames ahead too), then writes `count` context frames into the cache: `latent_of(j)` puts
// frame j's latent into st->io.latent, and the cache-write pass stores it under actions[j] (zeros when null).
template <typename LatentOf>
void Session::Impl::reset_context(int count, const float* actions, LatentOf latent_of) {
  if (actions) check_finite(actions, int64_t(count) * cfg.action_dim, "actions");
  std::unique_lock<std::mutex> lk = pause_worker(false);
  spec_action.clear();
  worker_error.clear();
  ring.clear();
  frame_index = 0;
  served_index = 0;
  lk.unlock();
  try {
    st->graph->reset_state(ctx);  // the decoder's and encoder's streams start over
    for (int j = 0; j < count; ++j) {
      prepare_state(ctx);
      latent_of(j);
      upload_action(ctx, actions ? actions + int64_t(j) * cfg.action_dim : nullptr);
      run_frame(false, false);
      device_synchronize(opt.device, ctx.stream);
      commit_frame();
    }
  } catch (...) {
    lk.lock();
    served_index = frame_index;
    resume_worker(lk);
    throw;
  }
  lk.lock();
  served_index = frame_index;
  resume_worker(lk);
}

void Session::Impl::decode_host(const float* latent, uint8_t* frame_out) {
  // Uses the write buffer as the input: it is only scratch between frames.
  Tensor host{const_cast<float*>(latent), DType::f32, Device::cpu, st->io.write.shape};
  ops::copy(ctx, host, st->io.write);
  st->graph->decode(ctx, st->io.write, st->io.frame);
  device_synchronize(opt.device, ctx.stream);
  frame_to_host(frame_out);
}

Session::Session(const std::string& path, const SessionOptions& options) {
  check_device_options(options.device, options.dtype, options.threads, true);
  check_session_options(options);
  const DeviceScope on_device(options.device);
  // The file is opened and checked once; the weights and the session are checked together against what is
  // available, before anything is allocated.
  ModelLoader loader = ModelLoader::open(path);
  MemoryEstimate need = estimate(loader, options);
  check_fits(options.device, need.total(), options.max_memory_bytes, "opening this session needs " + need.describe());
  ModelOptions mo;
  mo.device = options.device;
  mo.dtype = options.dtype;
  mo.threads = options.threads;
  mo.max_memory_bytes = options.max_memory_bytes;
  impl_ = std::make_unique<Impl>(Model::load(loader, mo, /*fits_checked=*/true), options, /*fits_checked=*/true);
  impl_->owns_model = true;
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options) {
  NFD_CHECK(model != nullptr, invalid_argument, "Session: model is null");
  const DeviceScope on_device(model->device());
  impl_ = std::make_unique<Impl>(std::move(model), options);
}

Session::~Session() {
  if (!impl_) return;
  const DeviceScope on_device(impl_->opt.device);
  impl_.reset();  // streams, graphs and memory go while their device is current
}

const Config& Session::config() const { return impl_->cfg; }
const SessionOptions& Session::options() const { return impl_->opt; }
const std::shared_ptr<const Model>& Session::model() const { return impl_->model; }
Device Session::device() const { return impl_->opt.device; }
DType Session::dtype() const { return impl_->opt.dtype; }
int64_t Session::frame_index() const { return impl_->served_index; }
size_t Session::memory_bytes() const {
  return impl_->arena.bytes() + (impl_->owns_model ? impl_->model->weight_bytes() : 0);
}
size_t Session::kv_cache_bytes() const { return impl_->arena.bytes(Arena::Use::kv_cache); }

Session::SpeculationStats Session::speculation_stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->stats;
}

void Session::reset_frames(const uint8_t* frames, int count, const float* actions) {
  Impl& s = *impl_;
  const DeviceScope on_device(s.opt.device);
  NFD_CHECK(count >= 0, invalid_argument, "reset: frame count must be >= 0");
  NFD_CHECK(count == 0 || frames, invalid_argument, "reset: frames is null");
  const int per_step = s.cfg.frames_per_step;
  NFD_CHECK(count % per_step == 0, invalid_argument,
            "reset: " + std::to_string(count) + " frames is not a multiple of " + std::to_string(per_step) +
                " (the frames of one latent of " + s.cfg.name + ")");
  const size_t frame_bytes = size_t(s.cfg.frame_bytes());  // one latent's frames
  s.reset_context(count / per_step, actions, [&](int j) {
    device_memcpy(s.st->io.frame.data, s.opt.device, frames + j * frame_bytes, Device::cpu, frame_bytes,
                  s.ctx.stream);
    s.st->graph->encode(s.ctx, s.st->io.frame, s.st->io.latent);
  });
}

void Session::reset_latents(const float* latents, int count, const float* actions) {
  Impl& s = *impl_;
  const DeviceScope on_device(s.opt.device);
  const Config& c = s.cfg;
  NFD_CHECK(count >= 0, invalid_argument, "reset: latent count must be >= 0");
  NFD_CHECK(count == 0 || latents, invalid_argument, "reset: latents is null");
  check_finite(latents, int64_t(count) * c.latent_numel(), "latents");
  s.reset_context(count, actions, [&](int j) {
    Tensor host{const_cast<float*>(latents + int64_t(j) * c.latent_numel()), DType::f32, Device::cpu,
                s.st->io.latent.shape};
    ops::copy(s.ctx, host, s.st->io.latent);
  });
}

void Session::step(const float* action, uint8_t* frame_out, float* latent_out) {
  Impl& s = *impl_;
  const DeviceScope on_device(s.opt.device);
  NFD_CHECK(action, invalid_argument, "step: action is null");
  check_finite(action, s.cfg.action_dim, "action");
  s.step(action, frame_out, latent_out);
}

void Session::decode(const float* latent, uint8_t* frame_out) {
  Impl& s = *impl_;
  const DeviceScope on_device(s.opt.device);
  NFD_CHECK(latent && frame_out, invalid_argument, "decode: null latent or output");
  check_finite(latent, s.cfg.latent_numel(), "latent");
  std::unique_lock<std::mutex> lk = s.pause_worker(true);
  lk.unlock();
  try {
    s.decode_host(latent, frame_out);
  } catch (...) {
    lk.lock();
    s.resume_worker(lk);
    throw;
  }
  lk.lock();
  s.resume_worker(lk);
}

std::unique_ptr<Session> Session::fork() const {
  Impl& s = *impl_;
  const DeviceScope on_device(s.opt.device);
  auto copy = std::make_unique<Session>(s.model, s.opt);
  Impl& d = *copy->impl_;
  // The served state: frames generated ahead stay with this session (their slots are empty in the fork).
  std::unique_lock<std::mutex> lk = s.pause_worker(true);
  try {
    d.st->graph->copy_state_from(s.ctx, *s.st->graph);
    device_synchronize(s.opt.device, s.ctx.stream);
  } catch (...) {
    s.resume_worker(lk);
    throw;
  }
  d.ring.assign(s.ring);
  d.rewind_to(s.served_index);
  d.served_index = s.served_index;
  s.resume_worker(lk);
  return copy;
}

}  // namespace nfd
