// nfd::Session: weights, KV cache and activation buffers allocated once at open on the session's device; the
// sampler of ReferenceSession (python/nfd_rt/reference/session.py) step for step.
//
// KV cache slots (per layer, cache_frames + 1 of them): sinks in [0, S); frame f >= S in the ring
// S + (f - S) % (W + 1). A frame sees the S sinks, the W frames before it and itself, i.e. S + W + 1 slots, and
// the slot it writes to holds frame f - W - 1, which it no longer sees. So every pass of frame f writes its
// K/V straight into the frame's final slot: no scratch copy, and all the device work of a frame runs on fixed
// buffers (run_frame), with the per-frame values in one FrameState in device memory.
#include "runtime/session.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "backends/device.h"
#include "core/error.h"
#include "core/model_file.h"
#include "model/dit.h"
#include "model/vae.h"
#include "ops/ops.h"
#include "ops/scratch_bound.h"

namespace nfd {

int physical_cores() {
  std::ifstream f("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int phys = 0;
  while (std::getline(f, line)) {
    auto value = [&] { return std::atoi(line.substr(line.find(':') + 1).c_str()); };
    if (line.rfind("physical id", 0) == 0) phys = value();
    if (line.rfind("core id", 0) == 0) cores.insert({phys, value()});
  }
  if (!cores.empty()) return int(cores.size());
  return std::max(1, int(std::thread::hardware_concurrency() / 2));
}

namespace {

int effective_threads(const SessionOptions& o) { return o.threads > 0 ? o.threads : physical_cores(); }

// With `need_device`, also that the device is there (an estimate can be made for a device this machine lacks).
void check_options(const SessionOptions& opt, bool need_device) {
  if (opt.device == Device::cuda) {
    if (need_device && !cuda_available())
      fail(ErrorKind::unsupported, "device cuda requested but CUDA is unavailable: " + cuda_unavailable_reason());
  } else {
    NFD_CHECK(opt.dtype == DType::f32, unsupported,
              std::string("the CPU backend computes in float32; dtype ") + dtype_name(opt.dtype) +
                  " needs device cuda");
  }
  NFD_CHECK(opt.threads >= 0 && opt.threads <= kMaxThreads, invalid_argument,
            "threads must be between 0 (= number of physical cores) and " + std::to_string(kMaxThreads) + ", got " +
                std::to_string(opt.threads));
}

// The session's own device buffers besides the model's: allocated by the session and by the estimate alike.
struct IoBuffers {
  Tensor state, action, latent, write, frame;
};
IoBuffers alloc_io_buffers(Arena& arena, const Config& cfg, DType dtype) {
  const std::vector<int64_t> lshape = {cfg.latent_channels, cfg.latent_height(), cfg.latent_width()};
  IoBuffers b;
  b.state = arena.alloc({int64_t(sizeof(FrameState))}, DType::u8);
  b.action = arena.alloc({cfg.action_dim}, dtype);
  b.latent = arena.alloc(lshape, dtype);
  b.write = arena.alloc(lshape, dtype);
  b.frame = arena.alloc({cfg.frame_height, cfg.frame_width, 3}, DType::u8);
  return b;
}

MemoryEstimate estimate_memory(const ModelFile& file, const SessionOptions& opt) {
  const Config& cfg = file.config();
  Arena arena = Arena::measure(opt.device);
  Context ctx;
  ctx.device = opt.device;
  ctx.threads = effective_threads(opt);
  alloc_io_buffers(arena, cfg, opt.dtype);
  model::DiT dit(file, cfg, arena, ctx, opt.dtype, cfg.cache_frames() + 1);
  model::VAE vae(file, cfg, arena, ctx, opt.dtype, true);
  MemoryEstimate m;
  m.device = opt.device;
  m.weights = arena.bytes(Arena::Use::weights);
  m.kv_cache = arena.bytes(Arena::Use::kv_cache);
  m.activations = arena.bytes(Arena::Use::activations);
  m.scratch = ops::scratch_bytes_bound(cfg, opt.device, opt.dtype, ctx.threads);
  return m;
}

// Refuses (ErrorKind::out_of_memory) a session that would not fit, before it allocates anything.
void check_memory(const MemoryEstimate& need, const SessionOptions& opt) {
  const std::string what = "opening this session needs " + need.describe() + " on " + device_name(opt.device);
  if (opt.max_memory_bytes && need.total() > opt.max_memory_bytes)
    fail(ErrorKind::out_of_memory, what + ", more than max_memory_bytes = " + format_bytes(double(opt.max_memory_bytes)));
  std::string source;
  const size_t available = available_memory(opt.device, &source);
  if (need.total() > available)
    fail(ErrorKind::out_of_memory,
         what + ", but only " + format_bytes(double(available)) + " is available (" + source + ")");
}

void check_finite(const float* p, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) {
      std::ostringstream s;
      s << what << " contains NaN or inf (first at flat index " << i << ", value " << p[i] << ")";
      fail(ErrorKind::invalid_argument, s.str());
    }
}

}  // namespace

struct Session::Impl {
  Config cfg;
  SessionOptions opt;
  Arena arena;
  Context ctx;
  void* stream = nullptr;
  // Whole-frame CUDA graphs (with and without decode), captured at the first step and replayed after.
  CudaGraph frame_graph[2];
  // num_visible each graph was captured for, when the attention kernel is sized on the host
  // (ops::attention_sized_on_host): such a graph is re-captured when the count changes (while the cache fills).
  int graph_visible[2] = {-1, -1};
  bool use_graphs = false;
  std::unique_ptr<model::DiT> dit;
  std::unique_ptr<model::VAE> vae;
  FrameState host_state{};
  Tensor state_dev;  // FrameState bytes on the device
  Tensor action_dev, latent_dev, write_dev, frame_dev, latent_host_dtype;
  std::vector<float> dts;       // Euler step per pass position, fixed per position (graph-friendly)
  float write_a = 1.f, write_b = 0.f;
  std::vector<int64_t> slot_frame;  // frame held by each cache slot, -1 when empty
  int64_t frame_index = 0;

  Impl(const std::string& path, const SessionOptions& o) : opt(o), arena(o.device) {
    check_options(opt, true);
    std::unique_ptr<ModelFile> file = ModelFile::open(path);
    cfg = file->config();
    NFD_CHECK(cfg.cache_frames() + 1 <= FrameState::kMaxSlots, unsupported,
              "sink_frames + window too large for FrameState::kMaxSlots");
    check_memory(estimate_memory(*file, opt), opt);
    ctx.device = opt.device;
    ctx.threads = effective_threads(opt);
    if (opt.device == Device::cuda) ctx.stream = stream = cuda_stream_create();
    use_graphs = opt.device == Device::cuda && opt.cuda_graphs;

    IoBuffers io = alloc_io_buffers(arena, cfg, opt.dtype);
    state_dev = io.state;
    action_dev = io.action;
    latent_dev = io.latent;
    write_dev = io.write;
    frame_dev = io.frame;
    ctx.state = reinterpret_cast<const FrameState*>(state_dev.data);
    ctx.host_state = &host_state;
    dit = std::make_unique<model::DiT>(*file, cfg, arena, ctx, opt.dtype, cfg.cache_frames() + 1);
    vae = std::make_unique<model::VAE>(*file, cfg, arena, ctx, opt.dtype, true);
    device_synchronize(opt.device, ctx.stream);

    // Scalars as the reference computes them: Python doubles, cast to fp32 where they meet a tensor.
    for (int k = 0; k < cfg.num_steps(); ++k) {
      double t = cfg.schedule[size_t(k)], next = k + 1 < cfg.num_steps() ? cfg.schedule[size_t(k + 1)] : 0.0;
      dts.push_back(float(next - t));
    }
    write_a = float(1.0 - double(cfg.context_noise));
    write_b = cfg.context_noise;
    slot_frame.assign(size_t(cfg.cache_frames() + 1), -1);
  }

  ~Impl() {
    if (stream) {
      try {
        device_synchronize(opt.device, stream);
      } catch (...) {
      }
      cuda_stream_destroy(stream);
    }
  }

  int slot_for(int64_t f) const {
    const int S = cfg.sink_frames, W = cfg.window;
    return f < S ? int(f) : S + int((f - S) % (W + 1));
  }

  // FrameState of frame `frame_index`: its slot and the slots of the frames it sees (the reference's rule).
  void prepare_state() {
    NFD_CHECK(frame_index < (int64_t(1) << 31) - 1, unsupported, "frame index overflow (2^31 frames)");
    FrameState& s = host_state;
    s.frame_index = int32_t(frame_index);
    s.write_slot = slot_for(frame_index);
    s.num_visible = 0;
    for (size_t slot = 0; slot < slot_frame.size(); ++slot) {
      const int64_t j = slot_frame[slot];
      if (int(slot) == s.write_slot || j < 0) continue;
      if (j < frame_index && (j < cfg.sink_frames || frame_index - j <= cfg.window))
        s.visible_slots[s.num_visible++] = int32_t(slot);
    }
    s.visible_slots[s.num_visible++] = s.write_slot;  // the frame itself
    device_memcpy(state_dev.data, opt.device, &s, Device::cpu, sizeof(FrameState), ctx.stream);
  }

  // All device work of one frame on fixed buffers, reading the FrameState from device memory. With
  // `generate`, samples latent_dev from noise first (else latent_dev holds a given context latent); then the
  // cache-write pass; then, with `decode`, the frame into frame_dev. The scalars of each pass position are
  // fixed, so a CUDA graph of this function can be replayed for every frame.
  void run_frame(bool generate, bool decode) {
    dit->condition(ctx, action_dev);
    if (generate) {
      ops::noise_mix(ctx, opt.seed, 0, 0.f, Tensor{}, 1.f, latent_dev);
      for (int k = 0; k < cfg.num_steps(); ++k) dit->denoise_pass(ctx, k, dts[size_t(k)], latent_dev);
    }
    ops::noise_mix(ctx, opt.seed, cfg.num_steps(), write_a, latent_dev, write_b, write_dev);
    dit->cache_write_pass(ctx, write_dev);
    if (decode) vae->decode(ctx, latent_dev, frame_dev);
  }

  // A generated frame: replays the captured whole-frame graph on CUDA (FrameState and action are copied to
  // device memory before, outside the graph), runs the ops directly elsewhere.
  void generate_frame(bool decode) {
    if (!use_graphs) return run_frame(true, decode);
    CudaGraph& g = frame_graph[decode ? 1 : 0];
    int& visible = graph_visible[decode ? 1 : 0];
    const bool stale = ops::attention_sized_on_host(ctx) && visible != host_state.num_visible;
    if (!g.captured() || stale) {
      g.capture(stream, [&] { run_frame(true, decode); });
      visible = host_state.num_visible;
    }
    g.replay(stream);
  }

  void upload_action(const float* action) {
    std::vector<float> zeros;
    if (!action) {
      zeros.assign(size_t(cfg.action_dim), 0.f);
      action = zeros.data();
    }
    Tensor host{const_cast<float*>(action), DType::f32, Device::cpu, {cfg.action_dim}};
    ops::copy(ctx, host, action_dev);
  }

  // The frame's K/V are in its slot: record it (after success only, so a failed frame leaves no trace).
  void commit_frame() {
    slot_frame[size_t(host_state.write_slot)] = frame_index;
    ++frame_index;
  }

  void latent_to_host(float* out) {
    Tensor host{out, DType::f32, Device::cpu, latent_dev.shape};
    ops::copy(ctx, latent_dev, host);
  }

  void frame_to_host(uint8_t* out) {
    device_memcpy(out, Device::cpu, frame_dev.data, opt.device, frame_dev.bytes(), ctx.stream);
  }

  void clear() {
    slot_frame.assign(slot_frame.size(), -1);
    frame_index = 0;
  }
};

std::string format_bytes(double bytes) {
  char buf[64];
  if (bytes >= double(1ull << 30))
    std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / double(1ull << 30));
  else if (bytes >= double(1ull << 20))
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / double(1ull << 20));
  else if (bytes >= 1024)
    std::snprintf(buf, sizeof(buf), "%.1f KiB", bytes / 1024.0);
  else
    std::snprintf(buf, sizeof(buf), "%.0f bytes", bytes);
  return buf;
}

std::string MemoryEstimate::describe() const {
  return format_bytes(double(total())) + " (weights " + format_bytes(double(weights)) + ", KV cache " +
         format_bytes(double(kv_cache)) + ", activations " + format_bytes(double(activations)) + ", scratch " +
         format_bytes(double(scratch)) + ")";
}

MemoryEstimate estimate_session_memory(const std::string& path, const SessionOptions& options) {
  check_options(options, false);
  std::unique_ptr<ModelFile> file = ModelFile::open(path);
  return estimate_memory(*file, options);
}

Session::Session(const std::string& path, const SessionOptions& options)
    : impl_(std::make_unique<Impl>(path, options)) {}
Session::~Session() = default;

const Config& Session::config() const { return impl_->cfg; }
const SessionOptions& Session::options() const { return impl_->opt; }
int64_t Session::frame_index() const { return impl_->frame_index; }
size_t Session::memory_bytes() const { return impl_->arena.bytes(); }
size_t Session::kv_cache_bytes() const { return impl_->dit->kv_cache_bytes(); }

void Session::reset_frames(const uint8_t* frames, int count, const float* actions) {
  Impl& s = *impl_;
  const Config& c = s.cfg;
  NFD_CHECK(count >= 0, invalid_argument, "reset: frame count must be >= 0");
  NFD_CHECK(count == 0 || frames, invalid_argument, "reset: frames is null");
  if (actions) check_finite(actions, int64_t(count) * c.action_dim, "actions");
  s.clear();
  const size_t frame_bytes = size_t(c.frame_height) * c.frame_width * 3;
  for (int j = 0; j < count; ++j) {
    s.prepare_state();
    device_memcpy(s.frame_dev.data, s.opt.device, frames + j * frame_bytes, Device::cpu, frame_bytes, s.ctx.stream);
    s.vae->encode(s.ctx, s.frame_dev, s.latent_dev);
    s.upload_action(actions ? actions + int64_t(j) * c.action_dim : nullptr);
    s.run_frame(false, false);
    device_synchronize(s.opt.device, s.ctx.stream);
    s.commit_frame();
  }
}

void Session::reset_latents(const float* latents, int count, const float* actions) {
  Impl& s = *impl_;
  const Config& c = s.cfg;
  NFD_CHECK(count >= 0, invalid_argument, "reset: latent count must be >= 0");
  NFD_CHECK(count == 0 || latents, invalid_argument, "reset: latents is null");
  check_finite(latents, int64_t(count) * c.latent_numel(), "latents");
  if (actions) check_finite(actions, int64_t(count) * c.action_dim, "actions");
  s.clear();
  for (int j = 0; j < count; ++j) {
    s.prepare_state();
    Tensor host{const_cast<float*>(latents + int64_t(j) * c.latent_numel()), DType::f32, Device::cpu,
                s.latent_dev.shape};
    ops::copy(s.ctx, host, s.latent_dev);
    s.upload_action(actions ? actions + int64_t(j) * c.action_dim : nullptr);
    s.run_frame(false, false);
    device_synchronize(s.opt.device, s.ctx.stream);
    s.commit_frame();
  }
}

void Session::step(const float* action, uint8_t* frame_out, float* latent_out) {
  Impl& s = *impl_;
  NFD_CHECK(action, invalid_argument, "step: action is null");
  check_finite(action, s.cfg.action_dim, "action");
  s.prepare_state();
  s.upload_action(action);
  s.generate_frame(frame_out != nullptr);
  device_synchronize(s.opt.device, s.ctx.stream);
  if (latent_out) s.latent_to_host(latent_out);
  if (frame_out) s.frame_to_host(frame_out);
  s.commit_frame();
}

void Session::decode(const float* latent, uint8_t* frame_out) {
  Impl& s = *impl_;
  NFD_CHECK(latent && frame_out, invalid_argument, "decode: null latent or output");
  check_finite(latent, s.cfg.latent_numel(), "latent");
  // Uses write_dev as the input buffer: it is only scratch between frames.
  Tensor host{const_cast<float*>(latent), DType::f32, Device::cpu, s.write_dev.shape};
  ops::copy(s.ctx, host, s.write_dev);
  s.vae->decode(s.ctx, s.write_dev, s.frame_dev);
  device_synchronize(s.opt.device, s.ctx.stream);
  s.frame_to_host(frame_out);
}

}  // namespace nfd
