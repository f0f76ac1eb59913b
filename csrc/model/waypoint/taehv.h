// Waypoint-1.5's streaming TAEHV autoencoder against ops/ops.h (python/nfd_rt/reference/waypoint.py TAEHVDecoder.step
// and TAEHVEncoder are the oracles). Each memory block reads its own input of one time step before (zeros after a
// reset). The decoder, one latent [C, h, w] -> frames_per_latent frames:
//   x = ReLU(conv_in(softcap(latent, 3)))
//   per stage s (3 memory blocks, then 2x in space and x stride_s in time):
//     every frame through each block in time order: y = ReLU(conv3(ReLU(conv2(ReLU(conv1([x, past]))))) + x)
//     each frame -> grow_s (1x1, channel chunk j = frame j) -> nearest 2x -> convs_s (3x3)
//   each frame: conv_out(ReLU(x)) -> pixel_shuffle -> clamp [0, 1] -> bilinear to the output size -> uint8
// The first decode after a reset runs the latent frames_per_latent - 1 times unseen first (upstream's priming).
// The encoder, frames_per_latent frames [Ho, Wo, 3] -> one latent, continuing the stream since its reset:
//   each frame: u / 255 -> bilinear to the autoencoder's size -> pixel unshuffle -> ReLU(conv_in)
//   per stage s: stride_s consecutive frames side by side in channels -> pool_s (1x1) -> down_s (3x3, stride 2)
//     -> 3 memory blocks
//   conv_out
// Time pooling groups frames within one latent and the blocks are causal, so encoding latent by latent equals
// encoding the whole clip at once (the reference's reset). Memory blocks run frame by frame through a stage (each
// frame's block b after its block b - 1 and the previous frame's block b: the same values as block by block).
// TAEHVWeights are the model's; a Decoder and an Encoder are one session's buffers and temporal state (the
// decoder's is copied by fork and kept in snapshots; the encoder's lives only within a reset).
#pragma once

#include <atomic>
#include <vector>

#include "backends/device.h"
#include "core/model_file.h"
#include "model/waypoint/config.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace waypoint {

struct TAEHVWeights {
  struct Conv {
    Tensor w, b;  // b undefined for the convolutions without bias
  };
  struct MemBlock {
    Conv conv1, conv2, conv3;
  };
  struct Decoder {
    Conv conv_in, conv_out;
    MemBlock blocks[3][3];
    Tensor grows[3], convs[3];
  } dec;
  struct Encoder {
    Conv conv_in, conv_out;
    MemBlock blocks[3][3];
    Tensor pools[3], downs[3];
  } enc;
  TAEHVWeights(const ModelFile& file, const WaypointConfig& cfg, Arena& arena, const Context& ctx, DType dtype);
};

class Decoder {
 public:
  Decoder(const WaypointConfig& cfg, const TAEHVWeights& weights, Arena& arena, DType dtype);
  // latent [C, h, w] -> frames u8 [F, Ho, Wo, 3], advancing the temporal state. Returns false, the frames unwritten
  // and the state as it was, when `cancel` was raised before the state changed (checked before the work begins).
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frames, const std::atomic<bool>* cancel);
  // Forgets the temporal state: the next decode is the first of a stream.
  void reset(const Context& ctx);
  void copy_state_from(const Context& ctx, const Decoder& other);
  // The temporal state as bytes: the memories in the session's dtype, then a 4-byte "primed" flag.
  size_t state_bytes() const;
  void save_state(const Context& ctx, uint8_t* out) const;
  void load_state(const Context& ctx, const uint8_t* in);

 private:
  // One run of the latent through the decoder; the frames are written when `emit` (priming runs do not need them).
  void run(const Context& ctx, const Tensor& latent, Tensor* frames);

  const WaypointConfig& cfg_;
  const TAEHVWeights::Decoder& w_;
  int strides_[3];
  std::vector<Tensor> mem_;     // 9: each memory block's input at the previous time step
  Tensor lat_;                  // the soft-capped latent
  Tensor xs_[4], ys_[3];  // the frames entering stage s ([n_s, ch_s, H_s, W_s]; xs_[3]: the head's), block outputs
  Tensor cat_[3], t1_[3], t2_[3];  // a memory block's [x, past] and its two inner activations
  Tensor grow_[3], up_;         // grow_s's output [ch_s * stride_s, H_s, W_s]; the last stage's upsampled frame
  Tensor head_, image_, resized_;  // conv_out's output, the shuffled image [3, H, W], resized [3, Ho, Wo]
  bool primed_ = false;
};

class Encoder {
 public:
  Encoder(const WaypointConfig& cfg, const TAEHVWeights& weights, Arena& arena, DType dtype);
  // frames u8 [F, Ho, Wo, 3] -> latent [C, h, w], advancing the encoder's temporal state.
  void encode(const Context& ctx, const Tensor& frames, Tensor& latent);
  // Forgets the temporal state: the next latent is the first of a clip.
  void reset(const Context& ctx);

 private:
  const WaypointConfig& cfg_;
  const TAEHVWeights::Encoder& w_;
  int strides_[3];
  std::vector<Tensor> mem_;           // 9: each memory block's input at the previous time step
  Tensor img_, resized_, unshuffled_;  // one frame: [3, Ho, Wo], [3, H, W], [3 p^2, H / p, W / p]
  Tensor group_;                       // stage 0's stride_0 frames after conv_in, side by side
  Tensor pooled_[3];                   // a group after pool_s, before down_s
  Tensor out_[3];                      // the frames leaving stage s ([n, E, H_s, W_s])
  Tensor fa_[3], fb_[3], cat_[3], t1_[3], t2_[3];  // a frame between blocks; a block's [x, past] and inner values
};

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
