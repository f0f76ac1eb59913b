// The frame sampler, written once: the sequence of model/architecture.h
//   condition(action) -> start_latent -> denoising passes -> write_input -> cache-write pass -> decode
// for every way the runtime makes frames: one session's step (one frame), a batch of sessions (a frame each,
// their GEMMs run as one), and one session's frames denoised together (parallel speculation: a frame per ring
// slot ahead, the same session graph). Each frame's FrameState (its frame index, the slot it writes, the slots
// it sees) is in its context, so a CUDA graph captured around sample_frames replays for every frame.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "model/architecture.h"

namespace nfd {

struct FrameJob {
  model::Member member;  // graph, context (FrameState), latent, cache-write input
  Tensor action;         // [action_dim] on the device
  Tensor frame;          // u8 [H, W, 3]: the decoded frame (when decoding)
  uint64_t seed = 0;
};

struct SampleOptions {
  // false: the latent is given (a context frame of reset): no noise and no denoising passes, only its
  // cache-write pass.
  bool generate = true;
  bool decode = false;
  // CUDA, one frame: the decode runs on this stream beside the cache-write pass (it reads only the final latent,
  // the pass only the cache-write input and the cache), forked after the latent is final and joined before the
  // frame counts as done; in a captured graph, two branches. Null: decode after the pass, on the frame's stream.
  void* decode_stream = nullptr;
  // Raised by another thread to abandon the frames (checked between passes and between decoder blocks).
  const std::atomic<bool>* cancel = nullptr;
};

// Runs the frames' sequence with `steps` denoising passes (the config's num_steps); returns false when `cancel` was raised (the frames are then incomplete: nothing is
// committed by the caller). All frames belong to one model; `act` holds at least frames.size() members.
bool sample_frames(const model::Architecture& arch, int steps, std::vector<FrameJob>& frames,
                   model::Activations& act, const SampleOptions& options);

}  // namespace nfd
