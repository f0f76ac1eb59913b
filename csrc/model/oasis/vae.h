// The Oasis ViT VAE against ops/ops.h (python/nfd_rt/reference/oasis.py OasisVAEEncoder / OasisVAEDecoder): a frame
// in patches of P x P pixels, one token each; pre-LN ViT blocks (LayerNorm with affine, attention with q/k/v biases
// and partial axial RoPE, exact-GELU MLP). VAEWeights are the model's; a VAE is one session's buffers.
#pragma once

#include <atomic>
#include <vector>

#include "backends/device.h"
#include "core/model_file.h"
#include "model/oasis/config.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace nfd {
namespace model {
namespace oasis {

struct VAEWeights {
  struct Block {
    Tensor norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  struct Net {
    int dim = 0, heads = 0;
    Tensor in_w, in_b;  // encoder: patch_embed; decoder: from_latent, its weight divided by the scaling factor
    std::vector<Block> blocks;
    Tensor norm_w, norm_b, out_w, out_b;  // encoder: norm, to_latent; decoder: norm, to_pixels
    Tensor ones;                          // [dim]: the gate of the residual adds (linear's gated_residual epilogue)
  };
  Net enc, dec;
  Tensor rope;  // [latent_h * latent_w, rope_dim, 2]: (cos, sin) of the first rope_dim pairs of every head
  VAEWeights(const ModelFile& file, const OasisConfig& cfg, Arena& arena, const Context& ctx, DType dtype);
};

class VAE {
 public:
  VAE(const OasisConfig& cfg, const VAEWeights& weights, Arena& arena, DType dtype);
  // DiT latent [C, h, w] -> frame u8 [H, W, 3]. Returns false, the frame unwritten, when `cancel` was raised
  // (checked between blocks).
  bool decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel = nullptr);
  // frame u8 [H, W, 3] -> DiT latent [C, h, w] (the encoder's mean times the scaling factor).
  void encode(const Context& ctx, const Tensor& frame, Tensor& latent);
  // The engines of both halves' attention and GEMMs, chosen at session open (SessionGraph::prepare_kernels).
  void prepare_kernels(const Context& ctx);

 private:
  // The blocks of `net` over x [N, dim] in place; false when `cancel` was raised.
  bool blocks(const Context& ctx, const VAEWeights::Net& net, Tensor& x, const std::atomic<bool>* cancel);
  Tensor buf(const Tensor& t, std::vector<int64_t> shape) const;

  const OasisConfig& cfg_;
  const VAEWeights& w_;
  Tensor image_, patches_, x_, hn_, qkv_, q_, k_, v_, attn_, mlp_, z_;  // sized for the wider of the two halves
  FixedFrameState state_;  // attention within the frame: K / V in slot 0 of k_ / v_
};

}  // namespace oasis
}  // namespace model
}  // namespace nfd
