// The VAE decoder (latent -> uint8 frame) and encoder (uint8 frame -> latent) for one image, against ops/ops.h.
// VAEWeights are the model's (loaded once, shared by its sessions); a VAE is one session's activation buffers:
// four fixed ping-pong buffers sized for the largest stage.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "backends/device.h"
#include "model/nfd/config.h"
#include "core/model_file.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace nfd_arch {

// The dtype the VAE computes in for a session of `dtype` on `device`: the session's, except that a bf16 session on
// the CPU decodes in fp32. The CPU's convolutions have fast fp32 paths only (Winograd, phase folding; in bf16 they
// widen every operand), the decoder is a few percent of an nfd-130m frame and over half of a tiny one, so bf16
// would cost time there and save none; the latent crosses over through one ops::copy each way.
inline DType vae_dtype(Device device, DType dtype) {
  return device == Device::cpu && dtype == DType::bf16 ? DType::f32 : dtype;
}

struct VAEWeights {
  struct Conv {
    Tensor w, b;
    int stride = 1, pad = 0;
  };
  struct Norm {
    Tensor gamma, beta;
  };
  struct ResBlock {
    Norm norm1, norm2;
    Conv conv1, conv2, skip;  // skip.w undefined when cin == cout
  };
  struct Level {
    std::vector<ResBlock> blocks;
    Conv resample;  // decoder: conv after nearest 2x upsample; encoder: stride-2 conv (undefined if none)
  };
  struct Net {
    Conv conv_in, conv_out;
    std::vector<Level> levels;
    Norm norm_out;
  };
  Net dec, enc;
  bool has_encoder = false;
  VAEWeights(const ModelFile& file, const NfdConfig& cfg, Arena& arena, const Context& ctx, DType dtype,
             bool with_encoder);
};

class VAE {
 public:
  VAE(const NfdConfig& cfg, const VAEWeights& weights, Arena& arena, DType dtype);
  // latent [C, h, w] -> frame u8 [H, W, 3]. Returns false, the frame unwritten, when `cancel` was raised
  // (checked between resnet blocks: a speculation worker's decode is most of a tiny frame).
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel = nullptr);
  // frame u8 [H, W, 3] -> latent [C, h, w]
  void encode(const Context& ctx, const Tensor& frame, Tensor& latent);

 private:
  using Net = VAEWeights::Net;
  // Runs `net` from buffer `cur` holding `x` (shape set); returns the index of the buffer holding the result,
  // or -1 when `cancel` was raised.
  int run(const Context& ctx, const Net& net, bool decoder, Tensor& x, int cur,
          const std::atomic<bool>* cancel = nullptr);
  Tensor buf(int i, std::vector<int64_t> shape) const;

  const NfdConfig& cfg_;
  const VAEWeights& w_;
  Tensor bufs_[4];
  Tensor image_;   // [3, H, W]
  Tensor latent_;  // [C, h, w] in the VAE's dtype when it is not the session's (vae_dtype), else undefined
};

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
