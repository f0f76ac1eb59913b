// nfd::Session's state, shared by the files that implement it by responsibility:
//   session.cc      open, memory estimate, reset, step (the frame's device work, CUDA graphs, host copies), fork
//   speculation.cc  frames generated ahead: the exact worker thread and parallel denoising
//   batch.cc        step_batch: several sessions' frames as one forward
// The frame's sequence itself is runtime/sampler.cc; the KV ring's rule runtime/kv_ring.cc; the architecture's
// graph model/<arch>/ behind model/architecture.h.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/device.h"
#include "model/architecture.h"
#include "runtime/kv_ring.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace nfd {

// The session's own device buffers besides its architecture's. state: one FrameState per cache group; frame: a
// step's frames (Config::frame_shape()).
struct IoBuffers {
  Tensor state, action, latent, write, frame;
  // 16-bit sessions: the action and the latent in float32, where a step's host copies convert on the device
  // (the staged step); undefined for float32 sessions.
  Tensor action_f32, latent_f32;
  IoBuffers(Arena& arena, const Config& cfg, DType dtype);
};

// One frame's FrameStates on the device: one per cache group of `cfg` (IoBuffers, parallel speculation's frames).
inline size_t frame_states_bytes(const Config& cfg) { return cfg.cache_policy().size() * sizeof(FrameState); }

// Whether a session of these options speculates in parallel, with k frames' buffers of its own (Impl::Parallel):
// the same test where they are allocated and where the estimate counts them.
inline bool speculates_in_parallel(const SessionOptions& o) {
  return o.speculate > 0 && o.speculate_mode == SpeculateMode::parallel;
}

// Everything a session allocates besides its model's weights, on `arena` (a real or a measuring one).
// The largest snapshot (Session::snapshot) a session of this config, graph and dtype can write: every cache group
// full, the decoder's state, the longest metadata. What serve reserves for a parked world.
size_t snapshot_size_bound(const Config& cfg, const model::SessionGraph& graph, DType dtype);

struct SessionState {
  IoBuffers io;
  std::unique_ptr<model::SessionGraph> graph;
  std::unique_ptr<model::Activations> own;  // one member's activations: the single-session passes
  SessionState(const Config& cfg, const model::Architecture& arch, const model::Weights& weights, Arena& arena,
               DType dtype, const std::vector<int>& cache_slots);
};

// Page-locked host staging of a CUDA session's step: the FrameState and action going up, the latent and frame
// coming down, so the copies are asynchronous and the step waits once, for everything.
class PinnedStaging {
 public:
  PinnedStaging(const Config& cfg, int64_t latent_numel, size_t groups);
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  FrameState* state() const { return reinterpret_cast<FrameState*>(p_); }  // one per cache group
  float* action() const { return reinterpret_cast<float*>(p_ + action_off_); }
  float* latent() const { return reinterpret_cast<float*>(p_ + latent_off_); }
  uint8_t* frame() const { return reinterpret_cast<uint8_t*>(p_ + frame_off_); }

 private:
  static size_t align(size_t n) { return (n + 63) / 64 * 64; }
  size_t action_off_, latent_off_, frame_off_;
  char* p_;
};

// Whole-frame CUDA graphs (with and without decode), captured at the first frame and replayed after.
struct FrameGraphs {
  CudaGraph graph[2];
  // num_visible and whether the visible slots are the cache's prefix (per cache group) each graph was captured
  // for, and whether an attention call in it read them on the host (ops::attention_read_host_state): such a graph
  // is re-captured when either changes (while the cache fills).
  std::vector<int> visible[2];
  bool reads_host_state[2] = {false, false};
};

struct Session::Impl {
  std::shared_ptr<const Model> model;
  const Config& cfg;
  const model::Architecture& arch;
  SessionOptions opt;
  Arena arena;
  Context ctx;
  void* stream = nullptr;
  void* decode_stream = nullptr;           // CUDA: the decode beside the cache-write pass (sampler.h)
  void release_streams() noexcept;  // waits for and destroys both streams (~Impl, a failed constructor)
  std::unique_ptr<PinnedStaging> staging;  // CUDA: a step's host copies
  bool use_graphs = false;
  FrameGraphs graphs;
  std::unique_ptr<SessionState> st;
  std::vector<FrameState> host_state;  // the current frame's FrameState per cache group (ctx.host_state)
  CacheRings ring;
  int64_t frame_index = 0;  // the next frame computed (ahead of the caller while speculating)
  bool owns_model = false;  // opened from a path: the model is this session's alone

  Impl(std::shared_ptr<const Model> m, const SessionOptions& o, bool fits_checked = false);
  ~Impl();

  // ---- one frame (session.cc) ----------------------------------------------------------------------------------
  FrameJob job(const Context& c, const Tensor& latent, const Tensor& write, const Tensor& frame) const;
  // FrameStates of frame g (one per cache group, into s[0 ..)), copied to `device_state` on c's stream.
  void make_state(int64_t g, FrameState* s, const Tensor& device_state, const Context& c);
  void prepare_state(const Context& c) { make_state(frame_index, host_state.data(), st->io.state, c); }
  size_t state_bytes() const { return ring.groups() * sizeof(FrameState); }
  // Whether the decode stays out of captured graphs and speculation (model::SessionGraph::decoder_keeps_state).
  bool stateful_decoder() const { return st->graph->decoder_keeps_state(); }
  // All device work of one frame on fixed buffers (sample_frames), reading the FrameState from device memory: with
  // `generate` the whole sequence; else (a context frame of reset) the cache-write pass of the given latent.
  bool run_frame(bool generate, bool decode, const std::atomic<bool>* cancel = nullptr);
  // A generated frame: replays the captured whole-frame graph on CUDA, runs the ops directly elsewhere.
  bool generate_frame(bool decode, const std::atomic<bool>* cancel = nullptr);
  void upload_action(const Context& c, const float* action);
  void commit_frame() {
    ring.commit(frame_index);
    ++frame_index;
  }
  void latent_to_host(float* out);
  void frame_to_host(uint8_t* out);
  // Forgets frames >= `first` (their slots become empty) and continues from `first`.
  void rewind_to(int64_t first) {
    ring.forget_from(first);
    frame_index = first;
  }
  bool compute_frame(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                     const std::atomic<bool>* cancel = nullptr);
  bool compute_frame_staged(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                            const std::atomic<bool>* cancel);
  bool compute_frame_staged_once(const float* action, bool decode, float* latent_out, uint8_t* frame_out,
                                 const std::atomic<bool>* cancel);
  template <typename LatentOf>
  void reset_context(int count, const float* actions, LatentOf latent_of);
  void decode_host(const float* latent, uint8_t* frame_out);
  void step(const float* action, uint8_t* frame_out, float* latent_out);

  // ---- snapshots (snapshot.cc) ----------------------------------------------------------------------------------
  struct SnapshotPlan;
  SnapshotPlan snapshot_plan() const;
  // Writes the blob of the served state to `out` (capacity bytes; nullptr: only its size) and returns its size.
  size_t write_snapshot(void* out, size_t capacity);
  // Replaces this session's state by a blob's, after checking it completely: the session is unchanged when a
  // check fails, and as after a reset when copying the state in fails.
  void load_snapshot(const void* data, size_t size);

  // ---- exact speculation (speculation.cc) ----------------------------------------------------------------------
  struct Ahead {
    std::vector<float> latent;
    std::vector<uint8_t> frame;  // empty when generated without decode
  };
  std::thread worker;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Ahead> ahead;         // frames served_index, served_index + 1, ... generated under spec_action
  std::vector<float> spec_action;  // empty: nothing to speculate on (after reset)
  bool spec_decode = true;         // decode the frames ahead (as the last step did)
  bool caller_active = false;      // the caller computes or inspects: the worker does not start a frame
  bool worker_busy = false;
  bool stop = false;
  std::atomic<bool> cancel{false};
  int64_t served_index = 0;  // frames returned to the caller (frame_index minus the frames ahead)
  std::string worker_error;
  SpeculationStats stats;

  bool speculating() const { return opt.speculate > 0; }
  bool exact_worker() const { return worker.joinable(); }
  void speculate_loop();
  void step_speculating(const float* action, uint8_t* frame_out, float* latent_out);
  // Holds the worker out (it finishes or abandons its frame first), so the caller owns the session's buffers.
  // With `keep_ahead` false, frames generated ahead are forgotten and the cache is rewound to the served frame.
  std::unique_lock<std::mutex> pause_worker(bool keep_ahead);
  void resume_worker(std::unique_lock<std::mutex>& lk);
  int wait_speculation();

  // ---- parallel speculation: k frames denoised together, block-causal among them (speculation.cc) ----------------
  struct Parallel {
    std::vector<FrameState> host;  // frame j's FrameStates at host[j * groups ..]
    std::vector<Tensor> state, latent, write, frame;
    std::unique_ptr<model::Activations> act;
    // k frames' buffers on `arena` (a session's, or a measuring one: session_part counts them).
    Parallel(const Config& cfg, const model::Architecture& arch, Arena& arena, DType dtype, int k);
  };
  std::unique_ptr<Parallel> par;
  void generate_parallel(const float* action, bool decode);
  void step_parallel(const float* action, uint8_t* frame_out, float* latent_out);
};

// Slots per cache group of a session of `cfg` with options `o`.
std::vector<int> cache_slots(const Config& cfg, const SessionOptions& o);
void check_finite(const float* p, int64_t n, const std::string& what);

}  // namespace nfd
