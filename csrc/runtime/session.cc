// nfd::Session: one world's KV cache, activation buffers and sampler over a shared Model; the sampler of
// ReferenceSession (python/nfd_rt/reference/session.py) step for step.
//
// KV cache slots (per layer, S + R of them): sinks in [0, S); frame f >= S in the ring S + (f - S) % R, where
// R = W + 1 + (frames generated ahead by speculation). A frame sees the S sinks, the W frames before it and
// itself, and the slot it writes to holds frame f - R, which no frame still in play sees. So every pass of frame
// f writes its K/V straight into the frame's final slot: no scratch copy, and all the device work of a frame runs
// on fixed buffers (run_frame), with the per-frame values in one FrameState in device memory. Attention visits
// the visible slots in frame order, so the result does not depend on where the ring happens to be.
//
// Exact speculation (SessionOptions::speculate = k): a worker thread generates up to k frames ahead under the
// last action while the caller is away, into the k spare ring slots; a call with the same action takes the next
// one, a different action cancels the worker (between passes and decoder blocks), forgets the frames ahead
// (their slots are never visible to the frames that follow) and steps normally. Frames are computed by the same code on the same
// inputs, so the video is bitwise the one plain stepping gives.
#include "runtime/session.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include "backends/device.h"
#include "core/error.h"
#include "model/dit.h"
#include "model/vae.h"
#include "ops/ops.h"
#include "ops/scratch_bound.h"

namespace nfd {

namespace {

void check_finite(const float* p, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) {
      std::ostringstream s;
      s << what << " contains NaN or inf (first at flat index " << i << ", value " << p[i] << ")";
      fail(ErrorKind::invalid_argument, s.str());
    }
}

int effective_threads(int threads) { return threads > 0 ? threads : physical_cores(); }

int ring_extra(const SessionOptions& o) { return std::max(o.speculate, 0); }

// The session's own device buffers besides the model's.
struct IoBuffers {
  Tensor state, action, latent, write, frame;
  // 16-bit sessions: the action and the latent in float32, where a step's host copies convert on the device
  // (compute_frame's asynchronous path); undefined for float32 sessions.
  Tensor action_f32, latent_f32;
};
IoBuffers alloc_io_buffers(Arena& arena, const Config& cfg, DType dtype) {
  const std::vector<int64_t> lshape = {cfg.latent_channels, cfg.latent_height(), cfg.latent_width()};
  IoBuffers b;
  b.state = arena.alloc({int64_t(sizeof(FrameState))}, DType::u8);
  b.action = arena.alloc({cfg.action_dim}, dtype);
  b.latent = arena.alloc(lshape, dtype);
  b.write = arena.alloc(lshape, dtype);
  b.frame = arena.alloc({cfg.frame_height, cfg.frame_width, 3}, DType::u8);
  if (dtype != DType::f32) {
    b.action_f32 = arena.alloc({cfg.action_dim}, DType::f32);
    b.latent_f32 = arena.alloc(lshape, DType::f32);
  }
  return b;
}

// Page-locked host staging of a CUDA session's step (compute_frame): the FrameState and action going up, the
// latent and frame coming down, so the copies are asynchronous and the step waits once, for everything.
class PinnedStaging {
 public:
  PinnedStaging(const Config& cfg, int64_t latent_numel)
      : action_off_(align(sizeof(FrameState))),
        latent_off_(action_off_ + align(size_t(cfg.action_dim) * sizeof(float))),
        frame_off_(latent_off_ + align(size_t(latent_numel) * sizeof(float))),
        p_(static_cast<char*>(pinned_host_alloc(frame_off_ + size_t(cfg.frame_height) * cfg.frame_width * 3))) {}
  ~PinnedStaging() { pinned_host_free(p_); }
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  FrameState* state() const { return reinterpret_cast<FrameState*>(p_); }
  float* action() const { return reinterpret_cast<float*>(p_ + action_off_); }
  float* latent() const { return reinterpret_cast<float*>(p_ + latent_off_); }
  uint8_t* frame() const { return reinterpret_cast<uint8_t*>(p_ + frame_off_); }

 private:
  static size_t align(size_t n) { return (n + 63) / 64 * 64; }
  size_t action_off_, latent_off_, frame_off_;
  char* p_;
};

// Everything a session allocates besides its model's weights, on `arena` (a real or a measuring one).
struct SessionState {
  IoBuffers io;
  std::unique_ptr<model::DiT> dit;
  std::unique_ptr<model::VAE> vae;
  SessionState(const Config& cfg, const model::DiTWeights& dw, const model::VAEWeights& vw, Arena& arena,
               DType dtype, int cache_slots)
      : io(alloc_io_buffers(arena, cfg, dtype)),
        dit(std::make_unique<model::DiT>(cfg, dw, arena, dtype, cache_slots)),
        vae(std::make_unique<model::VAE>(cfg, vw, arena, dtype)) {}
};

int cache_slots(const Config& cfg, const SessionOptions& o) { return cfg.cache_frames() + 1 + ring_extra(o); }

MemoryEstimate session_part(const Config& cfg, const model::DiTWeights& dw, const model::VAEWeights& vw,
                            Device device, DType dtype, const SessionOptions& o) {
  Arena arena = Arena::measure(device);
  SessionState st(cfg, dw, vw, arena, dtype, cache_slots(cfg, o));
  MemoryEstimate m;
  m.device = device;
  m.kv_cache = arena.bytes(Arena::Use::kv_cache);
  m.activations = arena.bytes(Arena::Use::activations);
  m.scratch = ops::scratch_bytes_bound(cfg, device, dtype, effective_threads(o.threads));
  return m;
}

void check_session_options(const SessionOptions& o) {
  NFD_CHECK(o.threads >= 0 && o.threads <= kMaxThreads, invalid_argument,
            "threads must be between 0 (= number of physical cores) and " + std::to_string(kMaxThreads) + ", got " +
                std::to_string(o.threads));
  NFD_CHECK(o.speculate >= 0 && o.speculate <= 64, invalid_argument,
            "speculate must be between 0 (off) and 64 frames ahead, got " + std::to_string(o.speculate));
}

}  // namespace

std::string MemoryEstimate::describe() const {
  return format_bytes(double(total())) + " (weights " + format_bytes(double(weights)) + ", KV cache " +
         format_bytes(double(kv_cache)) + ", activations " + format_bytes(double(activations)) + ", scratch " +
         format_bytes(double(scratch)) + ")";
}

MemoryEstimate estimate_session_memory(const std::string& path, const SessionOptions& options) {
  check_device_options(options.device, options.dtype, options.threads, false);
  check_session_options(options);
  std::unique_ptr<ModelFile> file = ModelFile::open(path);
  const Config& cfg = file->config();
  Arena weights = Arena::measure(options.device);
  Context ctx;
  ctx.device = options.device;
  ctx.threads = effective_threads(options.threads);
  model::DiTWeights dw(*file, cfg, weights, ctx, options.dtype);
  model::VAEWeights vw(*file, cfg, weights, ctx, options.dtype, true);
  MemoryEstimate m = session_part(cfg, dw, vw, options.device, options.dtype, options);
  m.weights = weights.bytes();
  return m;
}

struct Session::Impl {
  std::shared_ptr<const Model> model;
  const Config& cfg;
  SessionOptions opt;
  Arena arena;
  Context ctx;
  void* stream = nullptr;
  // CUDA: the frame's decode runs on its own stream, beside the cache-write pass (run_frame).
  void* decode_stream = nullptr;
  Context decode_ctx;
  std::unique_ptr<PinnedStaging> staging;  // CUDA: a step's host copies (compute_frame)
  // Whole-frame CUDA graphs (with and without decode), captured at the first step and replayed after.
  CudaGraph frame_graph[2];
  // num_visible each graph was captured for, when the attention kernel is sized on the host
  // (ops::attention_sized_on_host): such a graph is re-captured when the count changes (while the cache fills).
  int graph_visible[2] = {-1, -1};
  bool use_graphs = false;
  std::unique_ptr<SessionState> st;
  FrameState host_state{};
  std::vector<float> dts;       // Euler step per pass position, fixed per position (graph-friendly)
  float write_a = 1.f, write_b = 0.f;
  std::vector<int64_t> slot_frame;  // frame held by each cache slot, -1 when empty
  int64_t frame_index = 0;          // the next frame computed (ahead of the caller while speculating)
  bool owns_model = false;          // opened from a path: the model is this session's alone

  Impl(std::shared_ptr<const Model> m, const SessionOptions& o)
      : model(std::move(m)), cfg(model->config()), opt(o), arena(model->device()) {
    check_session_options(opt);
    opt.device = model->device();
    opt.dtype = model->dtype();
    MemoryEstimate need = session_part(cfg, model->dit(), model->vae(), opt.device, opt.dtype, opt);
    check_fits(opt.device, need.total(), opt.max_memory_bytes, "opening this session needs " + need.describe());
    ctx.device = opt.device;
    ctx.threads = effective_threads(opt.threads);
    if (opt.device == Device::cuda) ctx.stream = stream = cuda_stream_create();
    use_graphs = opt.device == Device::cuda && opt.cuda_graphs;
    st = std::make_unique<SessionState>(cfg, model->dit(), model->vae(), arena, opt.dtype, cache_slots(cfg, opt));
    ctx.state = reinterpret_cast<const FrameState*>(st->io.state.data);
    ctx.host_state = &host_state;  // kernels sized on the host (ops::attention_sized_on_host) read it
    st->dit->prepare_kernels(ctx, st->io.action);
    device_synchronize(opt.device, ctx.stream);
    if (opt.device == Device::cuda) {
      decode_ctx = ctx;
      decode_ctx.stream = decode_stream = cuda_stream_create();
      staging = std::make_unique<PinnedStaging>(cfg, st->io.latent.numel());
    }

    // Scalars as the reference computes them: Python doubles, cast to fp32 where they meet a tensor.
    for (int k = 0; k < cfg.num_steps(); ++k) {
      double t = cfg.schedule[size_t(k)], next = k + 1 < cfg.num_steps() ? cfg.schedule[size_t(k + 1)] : 0.0;
      dts.push_back(float(next - t));
    }
    write_a = float(1.0 - double(cfg.context_noise));
    write_b = cfg.context_noise;
    slot_frame.assign(size_t(cache_slots(cfg, opt)), -1);
    if (opt.speculate > 0 && opt.speculate_mode == SpeculateMode::exact)
      worker = std::thread([this] { speculate_loop(); });
    if (opt.speculate > 0 && opt.speculate_mode == SpeculateMode::parallel) par = std::make_unique<Parallel>(*this);
  }

  ~Impl() {
    if (worker.joinable()) {
      {
        std::lock_guard<std::mutex> lk(mu);
        stop = true;
        cancel = true;
      }
      cv.notify_all();
      worker.join();
    }
    for (void* s : {decode_stream, stream}) {
      if (!s) continue;
      try {
        device_synchronize(opt.device, s);
      } catch (...) {
      }
      cuda_stream_destroy(s);
    }
  }

  int slot_for(int64_t f) const {
    const int S = cfg.sink_frames, R = cfg.window + 1 + ring_extra(opt);
    return f < S ? int(f) : S + int((f - S) % R);
  }

  // FrameState of frame `frame_index`: its slot and the slots of the frames it sees (the reference's rule),
  // in frame order.
  void prepare_state(const Context& c) { make_state(frame_index, host_state, st->io.state, c); }

  // FrameState `s` of frame g, copied to `device_state`: g's slot and the slots of the frames it sees.
  void make_state(int64_t g, FrameState& s, const Tensor& device_state, const Context& c) {
    fill_state(g, s);
    device_memcpy(device_state.data, opt.device, &s, Device::cpu, sizeof(FrameState), c.stream);
  }

  // FrameState `s` of frame g (host only).
  void fill_state(int64_t g, FrameState& s) {
    NFD_CHECK(g < (int64_t(1) << 31) - 1, unsupported, "frame index overflow (2^31 frames)");
    s.frame_index = int32_t(g);
    s.write_slot = slot_for(g);
    std::vector<std::pair<int64_t, int>> seen;
    for (size_t slot = 0; slot < slot_frame.size(); ++slot) {
      const int64_t j = slot_frame[slot];
      if (int(slot) == s.write_slot || j < 0) continue;
      if (j < g && (j < cfg.sink_frames || g - j <= cfg.window)) seen.push_back({j, int(slot)});
    }
    std::sort(seen.begin(), seen.end());
    s.num_visible = 0;
    for (const auto& p : seen) s.visible_slots[s.num_visible++] = int32_t(p.second);
    s.visible_slots[s.num_visible++] = s.write_slot;  // the frame itself
  }

  // All device work of one frame on fixed buffers, reading the FrameState from device memory. With
  // `generate`, samples the latent from noise first (else it holds a given context latent); then the cache-write
  // pass; then, with `decode`, the frame. The scalars of each pass position are fixed, so a CUDA graph of this
  // function can be replayed for every frame. Returns false when `cancel` was raised between two passes.
  bool run_frame(bool generate, bool decode, const std::atomic<bool>* cancel = nullptr) {
    auto cancelled = [&] { return cancel && cancel->load(std::memory_order_relaxed); };
    st->dit->condition(ctx, st->io.action);
    if (generate) {
      ops::noise_mix(ctx, opt.seed, 0, 0.f, Tensor{}, 1.f, st->io.latent);
      for (int k = 0; k < cfg.num_steps(); ++k) {
        if (cancelled()) return false;
        st->dit->denoise_pass(ctx, k, dts[size_t(k)], st->io.latent);
      }
    }
    if (cancelled()) return false;
    ops::noise_mix(ctx, opt.seed, cfg.num_steps(), write_a, st->io.latent, write_b, st->io.write);
    if (decode && decode_stream && !cancel) {
      // CUDA: the decode reads only the latent, the cache-write pass only the cache-write latent and the cache
      // (VAE and DiT buffers are disjoint), so they run side by side: forked after the latent is final, joined
      // before the frame counts as done. In a captured graph, two branches.
      cuda_stream_wait_for(decode_stream, stream);
      bool ok = false;
      try {
        ok = st->vae->decode(decode_ctx, st->io.latent, st->io.frame);
        st->dit->cache_write_pass(ctx, st->io.write);
      } catch (...) {
        try {
          cuda_stream_wait_for(stream, decode_stream);  // a capture must end joined
        } catch (...) {
        }
        throw;
      }
      cuda_stream_wait_for(stream, decode_stream);
      return ok;
    }
    st->dit->cache_write_pass(ctx, st->io.write);
    // The decode is half a tiny frame: a cancelled frame skips it, or stops it between resnet blocks.
    if (decode && cancelled()) return false;
    if (decode) return st->vae->decode(ctx, st->io.latent, st->io.frame, cancel);
    return true;
  }

  // A generated frame: replays the captured whole-frame graph on CUDA (FrameState and action are copied to
  // device memory before, outside the graph), runs the ops directly elsewhere.
  bool generate_frame(bool decode, const std::atomic<bool>* cancel = nullptr) {
    if (!use_graphs) return run_frame(true, decode, cancel);
    CudaGraph& g = frame_graph[decode ? 1 : 0];
    int& visible = graph_visible[decode ? 1 : 0];
    const bool stale = ops::attention_sized_on_host(ctx) && visible != host_state.num_visible;
    if (!g.captured() || stale) {
      g.capture(stream, [&] { run_frame(true, decode); });
      visible = host_state.num_visible;
    }
    g.replay(stream);
    return true;
  }

  void upload_action(const Context& c, const float* action) {
    std::vector<float> zeros;
    if (!action) {
      zeros.assign(size_t(cfg.action_dim), 0.f);
      action = zeros.data();
    }
    Tensor host{const_cast<float*>(action), DType::f32, Device::cpu, {cfg.action_dim}};
    ops::copy(c, host, st->io.action);
  }

  // The frame's K/V are in its slot: record it (after success only, so a failed frame leaves no trace).
  void commit_frame() {
    slot_frame[size_t(host_state.write_slot)] = frame_index;
    ++frame_index;
  }

  void latent_to_host(float* out) {
    Tensor host{out, DType::f32, Device::cpu, st->io.latent.shape};
    ops::copy(ctx, st->io.latent, host);
  }

  void frame_to_host(uint8_t* out) {
    device_memcpy(out, Device::cpu, st->io.frame.data, opt.device, st->io.frame.bytes(), ctx.stream);
  }

  // Forgets frames >= `first` (their slots become empty) and continues from `first`.
  void rewind_to(int64_t first) {
    for (int64_t& f : slot_frame)
      if (f >= first) f = -1;
    frame_index = first;
  }

  void clear() {
    slot_frame.assign(slot_frame.size(), -1);
    frame_index = 0;
  }

  // Generates frame `frame_index` for `action` (host) into the session's buffers and commits it. Copies the
  // results out when given. Returns false (nothing committed) when cancelled.
  bool compute_frame(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                     const std::atomic<bool>* cancel = nullptr) {
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

  // compute_frame on CUDA with one host synchronisation: the FrameState and action go up from page-locked
  // staging (16-bit sessions convert the action on the device), the frame runs, the latent (converted on the
  // device) and the frame go down into the staging, all ordered on the stream; then one wait, and the results
  // are copied out of the staging on the host.
  bool compute_frame_staged(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                            const std::atomic<bool>* cancel) {
    const Device cuda = Device::cuda, cpu = Device::cpu;
    fill_state(frame_index, host_state);
    *staging->state() = host_state;
    device_memcpy_async(st->io.state.data, cuda, staging->state(), cpu, sizeof(FrameState), ctx.stream);
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

  // ---- exact speculation ------------------------------------------------------------------------------------
  struct Ahead {
    std::vector<float> latent;
    std::vector<uint8_t> frame;  // empty when generated without decode
  };
  std::thread worker;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Ahead> ahead;          // frames served_index, served_index + 1, ... generated under spec_action
  std::vector<float> spec_action;   // empty: nothing to speculate on (after reset)
  bool spec_decode = true;          // decode the frames ahead (as the last step did)
  bool caller_active = false;       // the caller computes or inspects: the worker does not start a frame
  bool worker_busy = false;
  bool stop = false;
  std::atomic<bool> cancel{false};
  int64_t served_index = 0;         // frames returned to the caller (frame_index minus the frames ahead)
  std::string worker_error;
  SpeculationStats stats;

  bool speculating() const { return opt.speculate > 0; }
  bool exact_worker() const { return worker.joinable(); }

  // ---- parallel speculation: k frames denoised together, block-causal among them ------------------------------
  struct Parallel {
    std::vector<FrameState> host;
    std::vector<Tensor> state, latent, write;
    std::unique_ptr<model::DiT::Activations> act;
    explicit Parallel(Impl& s) : host(size_t(s.opt.speculate)) {
      const std::vector<int64_t> lshape = {s.cfg.latent_channels, s.cfg.latent_height(), s.cfg.latent_width()};
      for (int j = 0; j < s.opt.speculate; ++j) {
        state.push_back(s.arena.alloc({int64_t(sizeof(FrameState))}, DType::u8));
        latent.push_back(s.arena.alloc(lshape, s.opt.dtype));
        write.push_back(s.arena.alloc(lshape, s.opt.dtype));
      }
      act = std::make_unique<model::DiT::Activations>(s.cfg, s.arena, s.opt.dtype, s.opt.speculate);
    }
  };
  std::unique_ptr<Parallel> par;

  // Generates frames frame_index .. frame_index + k - 1 under `action` in one multi-frame pass per step: frame j
  // attends to the cache and to frames 0..j-1 of the group at their current noise level (the K/V they wrote in
  // the same pass), then each frame's cache-write pass in order. Commits all k; queues them in `ahead`.
  void generate_parallel(const float* action, bool decode) {
    const int k = opt.speculate;
    const int64_t f0 = frame_index;
    for (int j = 0; j < k; ++j) slot_frame[size_t(slot_for(f0 + j))] = f0 + j;  // in progress: visible to later ones
    try {
      std::vector<model::DiT::Member> members, writes;
      for (int j = 0; j < k; ++j) {
        make_state(f0 + j, par->host[size_t(j)], par->state[size_t(j)], ctx);
        Context c = ctx;
        c.state = reinterpret_cast<const FrameState*>(par->state[size_t(j)].data);
        c.host_state = &par->host[size_t(j)];
        members.push_back({st->dit.get(), c, par->latent[size_t(j)]});
        writes.push_back({st->dit.get(), c, par->write[size_t(j)]});
      }
      upload_action(ctx, action);
      st->dit->condition(ctx, st->io.action);
      for (int j = 0; j < k; ++j) ops::noise_mix(members[size_t(j)].ctx, opt.seed, 0, 0.f, Tensor{}, 1.f, par->latent[size_t(j)]);
      for (int p = 0; p < cfg.num_steps(); ++p) model::DiT::denoise_pass(members, p, dts[size_t(p)], *par->act);
      for (int j = 0; j < k; ++j)
        ops::noise_mix(members[size_t(j)].ctx, opt.seed, cfg.num_steps(), write_a, par->latent[size_t(j)], write_b,
                       par->write[size_t(j)]);
      model::DiT::cache_write_pass(writes, *par->act);
      for (int j = 0; j < k; ++j) {
        Ahead a;
        a.latent.resize(size_t(cfg.latent_numel()));
        Tensor host{a.latent.data(), DType::f32, Device::cpu, st->io.latent.shape};
        ops::copy(ctx, par->latent[size_t(j)], host);
        if (decode) {
          st->vae->decode(members[size_t(j)].ctx, par->latent[size_t(j)], st->io.frame);
          device_synchronize(opt.device, ctx.stream);
          a.frame.resize(size_t(cfg.frame_height) * cfg.frame_width * 3);
          frame_to_host(a.frame.data());
        }
        ahead.push_back(std::move(a));
      }
      device_synchronize(opt.device, ctx.stream);
    } catch (...) {
      ahead.clear();
      rewind_to(f0);
      throw;
    }
    frame_index = f0 + k;
  }

  void step_parallel(const float* action, uint8_t* frame_out, float* latent_out) {
    const bool same = !spec_action.empty() &&
                      std::memcmp(spec_action.data(), action, sizeof(float) * size_t(cfg.action_dim)) == 0;
    if (!same || ahead.empty()) {
      stats.discarded += ahead.size();
      ahead.clear();
      rewind_to(served_index);
      spec_action.assign(action, action + cfg.action_dim);
      generate_parallel(action, frame_out != nullptr);
    } else {
      ++stats.served;
    }
    Ahead a = std::move(ahead.front());
    ahead.pop_front();
    ++served_index;
    if (latent_out) std::copy(a.latent.begin(), a.latent.end(), latent_out);
    if (frame_out) {
      if (a.frame.empty())
        decode_host(a.latent.data(), frame_out);  // generated by a step_latent call
      else
        std::copy(a.frame.begin(), a.frame.end(), frame_out);
    }
  }

  void speculate_loop() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      cv.wait(lk, [&] {
        return stop || (!caller_active && !spec_action.empty() && int(ahead.size()) < opt.speculate &&
                        worker_error.empty());
      });
      if (stop) return;
      worker_busy = true;
      const std::vector<float> action = spec_action;
      const bool decode = spec_decode;
      lk.unlock();
      Ahead a;
      a.latent.resize(size_t(cfg.latent_numel()));
      if (decode) a.frame.resize(size_t(cfg.frame_height) * cfg.frame_width * 3);
      bool done = false;
      std::string error;
      try {
        done = compute_frame(action.data(), decode, a.latent.data(), decode ? a.frame.data() : nullptr, &cancel);
      } catch (const std::exception& e) {
        error = e.what();
      }
      lk.lock();
      worker_busy = false;
      if (done) ahead.push_back(std::move(a));
      if (!error.empty()) worker_error = error;  // surfaced by the next call (which then steps normally)
      cv.notify_all();
    }
  }

  int wait_speculation() {
    std::unique_lock<std::mutex> lk(mu);
    if (!exact_worker()) return 0;
    // The negation of the worker's wake-up condition, with the worker idle: nothing more will be generated now.
    cv.wait(lk, [&] {
      const bool work = !caller_active && !spec_action.empty() && int(ahead.size()) < opt.speculate &&
                        worker_error.empty();
      return stop || (!worker_busy && !work);
    });
    return int(ahead.size());
  }

  // Holds the worker out (it finishes or abandons its frame first), so the caller owns the session's buffers.
  // With `keep_ahead` false, frames generated ahead are forgotten and the cache is rewound to the served frame.
  std::unique_lock<std::mutex> pause_worker(bool keep_ahead) {
    std::unique_lock<std::mutex> lk(mu);
    if (!exact_worker()) {
      if (!keep_ahead && par) {
        stats.discarded += ahead.size();
        ahead.clear();
        rewind_to(served_index);
      }
      return lk;
    }
    caller_active = true;
    if (!keep_ahead) cancel = true;
    cv.wait(lk, [&] { return !worker_busy; });
    cancel = false;
    if (!keep_ahead) {
      stats.discarded += ahead.size();
      ahead.clear();
      rewind_to(served_index);
    }
    return lk;
  }
  void resume_worker(std::unique_lock<std::mutex>& lk) {
    if (!exact_worker()) return;
    caller_active = false;
    lk.unlock();
    cv.notify_all();
  }

  void step(const float* action, uint8_t* frame_out, float* latent_out) {
    if (par) return step_parallel(action, frame_out, latent_out);
    if (!speculating()) {
      compute_frame(action, frame_out != nullptr, latent_out, frame_out);
      served_index = frame_index;
      return;
    }
    std::unique_lock<std::mutex> lk(mu);
    const bool same = !spec_action.empty() &&
                      std::memcmp(spec_action.data(), action, sizeof(float) * size_t(cfg.action_dim)) == 0;
    if (same && worker_error.empty()) {
      // The next frame is ahead already, or the worker is on it: take it.
      caller_active = true;
      cv.wait(lk, [&] { return !ahead.empty() || !worker_busy; });
      if (!ahead.empty()) {
        Ahead a = std::move(ahead.front());
        ahead.pop_front();
        ++served_index;
        ++stats.served;
        if (latent_out) std::copy(a.latent.begin(), a.latent.end(), latent_out);
        if (frame_out && !a.frame.empty()) std::copy(a.frame.begin(), a.frame.end(), frame_out);
        const bool need_decode = frame_out && a.frame.empty();
        spec_decode = frame_out != nullptr;
        if (need_decode) {  // generated without decode: decode it now, once the worker is off the buffers
          cv.wait(lk, [&] { return !worker_busy; });
          lk.unlock();
          decode_host(a.latent.data(), frame_out);
          lk.lock();
        }
        caller_active = false;
        lk.unlock();
        cv.notify_all();
        return;
      }
      caller_active = false;
    }
    lk.unlock();
    std::unique_lock<std::mutex> paused = pause_worker(false);
    worker_error.clear();
    paused.unlock();
    try {
      compute_frame(action, frame_out != nullptr, latent_out, frame_out);
    } catch (...) {
      paused.lock();
      resume_worker(paused);
      throw;
    }
    paused.lock();
    served_index = frame_index;
    spec_action.assign(action, action + cfg.action_dim);
    spec_decode = frame_out != nullptr;
    resume_worker(paused);
  }

  // Forgets everything (frames ahead too), then writes `count` context frames into the cache: `latent_of(j)`
  // puts frame j's latent into st->io.latent, and the cache-write pass stores it under actions[j] (zeros when
  // null).
  template <typename LatentOf>
  void reset_context(int count, const float* actions, LatentOf latent_of) {
    if (actions) check_finite(actions, int64_t(count) * cfg.action_dim, "actions");
    std::unique_lock<std::mutex> lk = pause_worker(false);
    spec_action.clear();
    worker_error.clear();
    clear();
    served_index = 0;
    lk.unlock();
    try {
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

  void decode_host(const float* latent, uint8_t* frame_out) {
    // Uses the write buffer as the input: it is only scratch between frames.
    Tensor host{const_cast<float*>(latent), DType::f32, Device::cpu, st->io.write.shape};
    ops::copy(ctx, host, st->io.write);
    st->vae->decode(ctx, st->io.write, st->io.frame);
    device_synchronize(opt.device, ctx.stream);
    frame_to_host(frame_out);
  }
};

Session::Session(const std::string& path, const SessionOptions& options) {
  check_device_options(options.device, options.dtype, options.threads, true);
  check_session_options(options);
  ModelOptions mo;
  mo.device = options.device;
  mo.dtype = options.dtype;
  mo.threads = options.threads;
  mo.max_memory_bytes = options.max_memory_bytes;
  // The weights and the session are checked together against what is available, before anything is allocated.
  MemoryEstimate need = estimate_session_memory(path, options);
  check_fits(options.device, need.total(), options.max_memory_bytes, "opening this session needs " + need.describe());
  impl_ = std::make_unique<Impl>(Model::load(path, mo), options);
  impl_->owns_model = true;
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options) {
  NFD_CHECK(model != nullptr, invalid_argument, "Session: model is null");
  impl_ = std::make_unique<Impl>(std::move(model), options);
}

Session::~Session() = default;

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

int Session::wait_speculation() { return impl_->wait_speculation(); }

void Session::reset_frames(const uint8_t* frames, int count, const float* actions) {
  Impl& s = *impl_;
  NFD_CHECK(count >= 0, invalid_argument, "reset: frame count must be >= 0");
  NFD_CHECK(count == 0 || frames, invalid_argument, "reset: frames is null");
  const size_t frame_bytes = size_t(s.cfg.frame_height) * s.cfg.frame_width * 3;
  s.reset_context(count, actions, [&](int j) {
    device_memcpy(s.st->io.frame.data, s.opt.device, frames + j * frame_bytes, Device::cpu, frame_bytes,
                  s.ctx.stream);
    s.st->vae->encode(s.ctx, s.st->io.frame, s.st->io.latent);
  });
}

void Session::reset_latents(const float* latents, int count, const float* actions) {
  Impl& s = *impl_;
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
  NFD_CHECK(action, invalid_argument, "step: action is null");
  check_finite(action, s.cfg.action_dim, "action");
  s.step(action, frame_out, latent_out);
}

void Session::decode(const float* latent, uint8_t* frame_out) {
  Impl& s = *impl_;
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
  auto copy = std::make_unique<Session>(s.model, s.opt);
  Impl& d = *copy->impl_;
  // The served state: frames generated ahead stay with this session (their slots are empty in the fork).
  std::unique_lock<std::mutex> lk = s.pause_worker(true);
  try {
    d.st->dit->copy_cache_from(s.ctx, *s.st->dit);
    device_synchronize(s.opt.device, s.ctx.stream);
  } catch (...) {
    s.resume_worker(lk);
    throw;
  }
  d.slot_frame = s.slot_frame;
  d.rewind_to(s.served_index);
  d.served_index = s.served_index;
  s.resume_worker(lk);
  return copy;
}

void Session::step_batch(const std::vector<Session*>& sessions, const float* actions, uint8_t* frames_out,
                         float* latents_out) {
  NFD_CHECK(!sessions.empty(), invalid_argument, "step_batch: no sessions");
  NFD_CHECK(actions, invalid_argument, "step_batch: actions is null");
  const size_t n = sessions.size();
  for (size_t i = 0; i < n; ++i) {
    NFD_CHECK(sessions[i], invalid_argument, "step_batch: session " + std::to_string(i) + " is null");
    NFD_CHECK(sessions[i]->impl_->model == sessions[0]->impl_->model, invalid_argument,
              "step_batch: session " + std::to_string(i) +
                  " uses a different model than session 0 (sessions in one batch must share a Model)");
    NFD_CHECK(!sessions[i]->impl_->speculating(), invalid_argument,
              "step_batch: session " + std::to_string(i) + " speculates (speculate > 0); step it on its own");
    for (size_t j = 0; j < i; ++j)
      NFD_CHECK(sessions[j] != sessions[i], invalid_argument,
                "step_batch: session " + std::to_string(i) + " appears twice (as session " + std::to_string(j) + ")");
  }
  const Config& cfg = sessions[0]->config();
  const int64_t A = cfg.action_dim;
  check_finite(actions, int64_t(n) * A, "actions");
  if (n == 1) return sessions[0]->step(actions, frames_out, latents_out);

  const Model& model = *sessions[0]->impl_->model;
  std::lock_guard<std::mutex> batch_lock(model.batch_mutex());
  model::DiT::Activations& act = model.batch_activations(int(n));
  Impl& lead = *sessions[0]->impl_;
  Context bctx = lead.ctx;  // the batch runs on the first session's stream and thread count
  std::vector<model::DiT::Member> members(n), writes(n);
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    Context c = bctx;
    c.state = s.ctx.state;
    c.host_state = s.ctx.host_state;
    s.prepare_state(c);
    s.upload_action(c, actions + int64_t(i) * A);
    s.st->dit->condition(c, s.st->io.action);
    ops::noise_mix(c, s.opt.seed, 0, 0.f, Tensor{}, 1.f, s.st->io.latent);
    members[i] = model::DiT::Member{s.st->dit.get(), c, s.st->io.latent};
    writes[i] = model::DiT::Member{s.st->dit.get(), c, s.st->io.write};
  }
  for (int k = 0; k < cfg.num_steps(); ++k) model::DiT::denoise_pass(members, k, lead.dts[size_t(k)], act);
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    ops::noise_mix(members[i].ctx, s.opt.seed, cfg.num_steps(), s.write_a, s.st->io.latent, s.write_b, s.st->io.write);
  }
  model::DiT::cache_write_pass(writes, act);
  const int64_t frame_bytes = int64_t(cfg.frame_height) * cfg.frame_width * 3;
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    if (frames_out) s.st->vae->decode(members[i].ctx, s.st->io.latent, s.st->io.frame);
  }
  device_synchronize(lead.opt.device, bctx.stream);
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    if (latents_out) {
      Tensor host{latents_out + int64_t(i) * cfg.latent_numel(), DType::f32, Device::cpu, s.st->io.latent.shape};
      ops::copy(bctx, s.st->io.latent, host);
    }
    if (frames_out)
      device_memcpy(frames_out + int64_t(i) * frame_bytes, Device::cpu, s.st->io.frame.data, s.opt.device,
                    size_t(frame_bytes), bctx.stream);
  }
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    s.commit_frame();
    s.served_index = s.frame_index;
  }
}

}  // namespace nfd
