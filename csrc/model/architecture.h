// The plug-in seam: what one model architecture gives the runtime. The runtime (runtime/: the loader, Model,
// Session, the KV ring, the frame sampler loop, batching, speculation, CUDA graphs, the memory estimate) is
// written once against this interface and knows no architecture; each architecture is a folder
// model/<arch>/ (its config, its tensor names, its graph of passes over the shared ops in ops/ops.h, its
// decoder) registered by name in architecture.cc, as llama.cpp keeps one graph builder per architecture over
// shared ops. docs/architecture.md, "Adding a model architecture", goes through it file by file.
//
// The frame sequence every architecture follows (runtime/sampler.cc runs it for one session, a batch of
// sessions, or one session's frames denoised together):
//   condition(action) -> start_latent -> denoise_pass k = 0 .. num_steps-1 -> write_input -> cache_write_pass
//   -> decode
// A member's per-frame values (frame index, the cache slot it writes, the slots it sees) are in the FrameStates
// of its context, so a captured CUDA graph of the sequence replays for every frame: ctx.state points at one
// FrameState per cache group of the config (Config::cache_policy(), in that order; ctx.host_state likewise), and a
// layer of group g reads ctx.state + g (group_context below). One group (the NFD and Oasis models): ctx.state is it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends/device.h"
#include "core/config.h"
#include "core/config_json.h"
#include "core/model_file.h"
#include "ops/ops.h"

namespace nfd {
namespace model {

// A model's weights on its device: loaded once, then read-only, shared by every session of the model.
class Weights {
 public:
  virtual ~Weights() = default;
};

// The activations of one pass for up to `capacity` members (a session keeps one for itself; a Model keeps one
// for batched steps).
class Activations {
 public:
  virtual ~Activations() = default;
  int capacity = 0;
};

// One session's state for its architecture: KV caches, per-frame conditioning buffers, the decoder's buffers
// (and its state between frames, for decoders that keep one).
class SessionGraph {
 public:
  virtual ~SessionGraph() = default;
  // Picks the kernels of a frame where the backend has several (CUDA: GEMM engines, attention tiles; a no-op on
  // the CPU), with `action` standing for any action. Synchronises ctx's stream: called at session open.
  virtual void prepare_kernels(const Context& ctx, const Tensor& action) = 0;
  // Per frame, before the passes: the conditioning of `action` [action_dim] for every pass of the frame.
  virtual void condition(const Context& ctx, const Tensor& action) = 0;
  // The latent a frame's sampling starts from (noise drawn at the FrameState's frame index).
  virtual void start_latent(const Context& ctx, uint64_t seed, Tensor& latent) = 0;
  // The cache-write pass's input made from the finished latent (noised to the context level, or as it is).
  virtual void write_input(const Context& ctx, uint64_t seed, const Tensor& latent, Tensor& write) = 0;
  // latent [C, h, w] -> the step's frames u8 Config::frame_shape() ([H, W, 3], or [frames_per_step, H, W, 3]).
  // Returns false, the frames unwritten, when `cancel` was raised. A decoder that keeps state between frames
  // (decoder_keeps_state) advances it: the runtime decodes each generated latent once, in order.
  virtual bool decode(const Context& ctx, const Tensor& latent, Tensor& frame,
                      const std::atomic<bool>* cancel = nullptr) = 0;
  // The frames of one latent, u8 Config::frame_shape() -> latent [C, h, w] (reset with context frames; an encoder
  // with state between latents continues the stream reset_state started).
  virtual void encode(const Context& ctx, const Tensor& frame, Tensor& latent) = 0;
  // Copies another session's state (caches, decoder state) of the same model into this one (fork).
  virtual void copy_state_from(const Context& ctx, const SessionGraph& other) = 0;
  virtual size_t kv_cache_bytes() const = 0;
  // Clears whatever the decoder and encoder keep between frames (a streaming decoder's memory: the next decode is
  // the first of a stream). The runtime calls it when the session opens and at every reset, before the context is
  // encoded. The KV caches need nothing: the ring forgets their frames.
  virtual void reset_state(const Context& ctx) { (void)ctx; }
  // True when decode() depends on the latents decoded before (a streaming decoder): the runtime then decodes only
  // frames it returns, in order (speculation generates latents ahead, decoded when served), and never inside a
  // captured CUDA graph (the decoder's host-side state would not advance at a replay).
  virtual bool decoder_keeps_state() const { return false; }

  // Snapshots (runtime/snapshot.cc): the architecture owns the bytes of its state. The runtime picks, per cache
  // group, the slots whose frames a future frame can still see and passes them in frame order; the state written is
  // what those slots hold in every cached layer of the group (NFD: K then V per layer), group after group, followed
  // by any decoder state kept between frames (NFD's VAE keeps none). Byte-exact in the session's dtype, so a
  // restored session computes bitwise alike. state_bytes(counts): the size of that state for counts[g] slots of
  // group g. save_state writes exactly state_bytes of the slots' counts to host memory `out`; load_state reads as
  // many from host memory `in` into `slots` (of this session, whose rings may differ in size from the saved one's).
  // Both synchronise ctx's stream.
  virtual size_t state_bytes(const std::vector<int>& slot_counts) const = 0;
  virtual void save_state(const Context& ctx, const std::vector<std::vector<int>>& slots, uint8_t* out) const = 0;
  virtual void load_state(const Context& ctx, const std::vector<std::vector<int>>& slots, const uint8_t* in) = 0;
};

// ctx reading cache group g's FrameState (ctx.state and ctx.host_state point at one per group).
inline Context group_context(const Context& ctx, int g) {
  Context c = ctx;
  if (c.state) c.state += g;
  if (c.host_state) c.host_state += g;
  return c;
}

// A frame in flight.
struct Member {
  SessionGraph* graph = nullptr;
  Context ctx;     // the member's FrameState; device, threads and stream of the batch
  Tensor latent;   // [C, h, w]: start_latent writes it, the denoising passes update it
  Tensor write;    // the cache-write pass's input (write_input)
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  virtual const char* name() const = 0;

  // The config: its fields from a JSON object (each checked; the generic Config filled from them), JSON back,
  // and the tensors a model of the config has (names and shapes, in state_dict order).
  virtual Config parse_config(const config_json::json& j) const = 0;
  virtual std::string config_to_json(const Config& cfg) const = 0;
  virtual std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg) const = 0;

  // The weights of `file` as `dtype` on `arena`'s device (a measuring arena only counts their bytes).
  virtual std::unique_ptr<Weights> load_weights(const ModelFile& file, const Config& cfg, Arena& arena,
                                                const Context& ctx, DType dtype) const = 0;
  // One session's state with cache_slots[g] slots per cached layer of cache group g, on `arena`.
  virtual std::unique_ptr<SessionGraph> make_session(const Config& cfg, const Weights& weights, Arena& arena,
                                                     DType dtype, const std::vector<int>& cache_slots) const = 0;
  virtual std::unique_ptr<Activations> make_activations(const Config& cfg, Arena& arena, DType dtype,
                                                        int capacity) const = 0;

  // Denoising pass k (0 <= k < cfg.num_steps()) of every member: the model's output at the pass's noise level,
  // the latent updated by the architecture's schedule, each member's K/V written to its FrameState's write slot.
  // All members belong to one model; `act` holds at least members.size().
  virtual void denoise_pass(const std::vector<Member>& members, int k, Activations& act) const = 0;
  // The cache-write pass: each member's K/V of its `write` latent at the context level into its write slot.
  virtual void cache_write_pass(const std::vector<Member>& members, Activations& act) const = 0;

  // An upper bound of the ops' scratch memory while a session of `cfg` runs (ops/scratch_bound.h); `members`
  // frames computed in one forward (parallel speculation's k, else 1).
  virtual size_t scratch_bytes_bound(const Config& cfg, Device device, DType dtype, int threads,
                                     int members) const = 0;
};

// The architecture registered under `name`; an invalid_file error naming the known ones otherwise.
const Architecture& architecture(const std::string& name);
std::vector<std::string> architecture_names();

}  // namespace model

// Parses and validates a .nfd file's config JSON: the "architecture" field (absent in files written before there
// was more than one: "nfd") picks the plug-in that parses the rest. Throws nfd::Error(invalid_file) naming the
// first bad field.
Config parse_config_json(const std::string& json_text);
// The JSON of `cfg` with the field names of its Python config dataclass (python/nfd_rt/configs.py).
std::string config_to_json(const Config& cfg);

}  // namespace nfd
