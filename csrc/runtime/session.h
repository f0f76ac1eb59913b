// The frame-step session: one world's state (KV cache, frame index, noise position) over a shared Model's
// weights, with its own activation buffers and sampler. Written once against the op interface (ops/ops.h); the
// device is the model's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model_file.h"
#include "core/tensor.h"
#include "runtime/model.h"

namespace nfd {

enum class SpeculateMode { exact, parallel };

struct SessionOptions {
  Device device = Device::cpu;  // used when the session loads its own model (Session(path, ...))
  DType dtype = DType::f32;     // f32 on CPU; f32, bf16 or f16 on CUDA (idem)
  uint64_t seed = 0;
  int threads = 0;           // CPU threads; 0 = number of physical cores; at most kMaxThreads
  bool cuda_graphs = true;   // capture a whole frame once and replay it (CUDA only)
  // Refuse to open (ErrorKind::out_of_memory) when the session would need more than this many bytes on its
  // device; 0 = no limit beyond the memory the device has available.
  uint64_t max_memory_bytes = 0;
  // Speculative sampling: keep up to `speculate` frames generated ahead under the last action (0 = off).
  // exact: the frames plain stepping would produce, computed in a background thread between calls; a different
  // action discards them and rolls the cache back, so the video never changes. parallel: when the action
  // changes, `speculate` frames are denoised together in one multi-frame pass (block-causal among them, each
  // seeing the earlier ones at the current noise level), the NFD paper's way: more frames per second, not the
  // same frames as plain stepping.
  int speculate = 0;
  SpeculateMode speculate_mode = SpeculateMode::exact;
};

// What a session will allocate on its device, computed from the file's config before anything is allocated:
// weights, KV cache and activation buffers exactly (the constructors run on a measuring Arena), plus an upper
// bound of the ops' scratch memory (ops/scratch_bound.h).
struct MemoryEstimate {
  Device device = Device::cpu;
  size_t weights = 0, kv_cache = 0, activations = 0, scratch = 0;
  // Not memory the session holds: the largest snapshot it can write (full caches, decoder state, metadata).
  size_t snapshot = 0;
  size_t total() const { return weights + kv_cache + activations + scratch; }
  std::string describe() const;  // "1.2 GiB (weights 7.1 MiB, KV cache ..., activations ..., scratch ...)"
};
// A session of `path` with its own model (weights included).
MemoryEstimate estimate_session_memory(const std::string& path, const SessionOptions& options);

class Session {
 public:
  // A session over its own copy of the model in `path` (device and dtype from `options`).
  Session(const std::string& path, const SessionOptions& options);
  // A session over a shared model (options.device / dtype are ignored: the model's apply).
  Session(std::shared_ptr<const Model> model, const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Config& config() const;
  const SessionOptions& options() const;
  const std::shared_ptr<const Model>& model() const;
  Device device() const;
  DType dtype() const;
  int64_t frame_index() const;  // the next frame step() returns
  // Bytes held on the device: the session's KV cache and activation buffers, plus the weights when the session
  // opened its own model (Session(path, ...)); a session of a shared Model does not count the shared weights.
  size_t memory_bytes() const;
  size_t kv_cache_bytes() const;

  // Clears the cache (and the decoder's state); then writes `count` context frames (uint8 [count, H, W, 3], count a
  // multiple of frames_per_step: each latent's frames are encoded together) or latents (float [count, C, h, w]) into
  // it, with one action per latent, [count / frames_per_step, action_dim] or [count, action_dim] (nullptr = zeros).
  void reset_frames(const uint8_t* frames, int count, const float* actions);
  void reset_latents(const float* latents, int count, const float* actions);
  // Generates the next frame for `action` [action_dim]: frame_out uint8 [H, W, 3] ([frames_per_step, H, W, 3]
  // when a latent decodes to several frames) and/or latent_out float [C, h, w] (either may be nullptr; decoding
  // runs only when frame_out is given). The order of nfd_session_step.
  void step(const float* action, uint8_t* frame_out, float* latent_out);
  // Decodes one latent [C, h, w] to uint8 [H, W, 3] ([frames_per_step, H, W, 3]) without touching the session
  // state, except a streaming decoder's (model::SessionGraph::decoder_keeps_state): that advances, as step() would.
  void decode(const float* latent, uint8_t* frame_out);
  // An independent session continuing from this one's state (cache, frame index, seed), sharing the model.
  std::unique_ptr<Session> fork() const;

  // Snapshots (docs/snapshots.md): everything this world's future depends on (the K/V of the frames a later
  // frame can still see, which frames they are, the frame index, the seed), checked by the model's config and a
  // fingerprint of its weights, the dtype, a format version and a CRC-32C. Frames generated ahead by speculation
  // are not saved: like fork(), a snapshot is the served state. snapshot_size() is the blob's size now;
  // snapshot(out, capacity) writes it (invalid_argument when capacity is smaller) and returns its size.
  size_t snapshot_size() const;
  size_t snapshot(void* out, size_t capacity) const;
  std::vector<uint8_t> snapshot() const;
  // A session continuing from a snapshot of a session of the same model (config and weights) and dtype:
  // bitwise the frames the original would produce next (on the CPU). options.seed is replaced by the
  // snapshot's; speculation, threads and CUDA graphs may differ from the original's. A bad blob throws
  // invalid_argument naming what is wrong or differs.
  Session(std::shared_ptr<const Model> model, const SessionOptions& options, const void* snapshot, size_t size);
  Session(const std::string& path, const SessionOptions& options, const void* snapshot, size_t size);

  // Steps sessions of one model as one batched forward (GEMMs over all their tokens, attention per session over
  // its own cache): actions [n, action_dim]; frames_out [n, H, W, 3] ([n, frames_per_step, H, W, 3]) and/or
  // latents_out [n, C, h, w] (either may be null). The same frames as stepping each session alone (within fp rounding: the GEMMs see more rows).
  static void step_batch(const std::vector<Session*>& sessions, const float* actions, uint8_t* frames_out,
                         float* latents_out);

  struct SpeculationStats {
    uint64_t served = 0;     // frames returned from speculation
    uint64_t discarded = 0;  // frames generated ahead and thrown away (the action changed)
  };
  SpeculationStats speculation_stats() const;
  // Blocks until exact speculation's background worker has generated every frame it would generate now (up to
  // `speculate` frames ahead under the last action; fewer after a reset or a worker error) and returns the
  // frames ahead. Makes "the player paused long enough for the worker to run ahead" exact (tests, benchmarks)
  // instead of a sleep that is too short on a loaded machine. 0 without exact speculation.
  int wait_speculation();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nfd
