// The frame-step session: owns the weights on the device, the KV cache, fixed activation buffers and the
// sampler. Written once against the op interface (ops/ops.h); the device is a parameter.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/model_file.h"

#include "core/config.h"
#include "core/tensor.h"

namespace nfd {

struct SessionOptions {
  Device device = Device::cpu;
  DType dtype = DType::f32;  // f32 on CPU; f32, bf16 or f16 on CUDA
  uint64_t seed = 0;
  int threads = 0;           // CPU threads; 0 = number of physical cores; at most kMaxThreads
  bool cuda_graphs = true;   // capture a whole frame once and replay it (CUDA only)
  // Refuse to open (ErrorKind::out_of_memory) when the session would need more than this many bytes on its
  // device; 0 = no limit beyond the memory the device has available.
  uint64_t max_memory_bytes = 0;
};

// threads above this are refused: a typo (threads=100000) would otherwise run a pool of that many threads.
constexpr int kMaxThreads = 1024;

// What a session will allocate on its device, computed from the file's config before anything is allocated:
// weights, KV cache and activation buffers exactly (the model constructors run on a measuring Arena), plus an
// upper bound of the ops' scratch memory (ops/scratch_bound.h).
struct MemoryEstimate {
  Device device = Device::cpu;
  size_t weights = 0, kv_cache = 0, activations = 0, scratch = 0;
  size_t total() const { return weights + kv_cache + activations + scratch; }
  std::string describe() const;  // "1.2 GiB (weights 7.1 MiB, KV cache ..., activations ..., scratch ...)"
};
MemoryEstimate estimate_session_memory(const std::string& path, const SessionOptions& options);

// "1.2 GiB", "340.0 MiB", "512 bytes"
std::string format_bytes(double bytes);

// The CPU thread count that SessionOptions::threads == 0 means: physical cores (distinct (physical id, core id)
// pairs in /proc/cpuinfo), else half the hardware threads.
int physical_cores();

class Session {
 public:
  Session(const std::string& path, const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Config& config() const;
  const SessionOptions& options() const;
  int64_t frame_index() const;
  // Bytes held by the session on its device: weights + KV cache + activation buffers.
  size_t memory_bytes() const;
  size_t kv_cache_bytes() const;

  // Clears the cache; then writes `count` context frames (uint8 [count, H, W, 3]) or latents
  // (float [count, C, h, w]) into it, with actions [count, action_dim] (nullptr = zeros).
  void reset_frames(const uint8_t* frames, int count, const float* actions);
  void reset_latents(const float* latents, int count, const float* actions);
  // Generates the next frame for `action` [action_dim]: frame_out uint8 [H, W, 3] and/or latent_out float
  // [C, h, w] (either may be nullptr; decoding runs only when frame_out is given). The order of nfd_session_step.
  void step(const float* action, uint8_t* frame_out, float* latent_out);
  // Decodes one latent [C, h, w] to uint8 [H, W, 3] without touching the session state.
  void decode(const float* latent, uint8_t* frame_out);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nfd
