#include "model/oasis/vae.h"

#include <algorithm>
#include <string>

#include "model/oasis/dit.h"

namespace nfd {
namespace model {
namespace oasis {

VAEWeights::VAEWeights(const ModelFile& file, const OasisConfig& cfg, Arena& arena, const Context& ctx, DType dtype) {
  const OasisVAEConfig& v = cfg.vae;
  const int64_t C = cfg.latent_channels, Pd = cfg.vae_patch_dim();
  auto up = [&](const std::string& name, std::vector<int64_t> shape) {
    return upload(file, name, shape, arena, ctx, dtype);
  };
  auto net = [&](const std::string& prefix, int64_t E, int heads, int depth) {
    Net n;
    n.dim = int(E);
    n.heads = heads;
    const int64_t F = int64_t(v.mlp_ratio) * E;
    for (int l = 0; l < depth; ++l) {
      const std::string p = prefix + "blocks." + std::to_string(l) + ".";
      Block b;
      b.norm1_w = up(p + "norm1.weight", {E});
      b.norm1_b = up(p + "norm1.bias", {E});
      b.qkv_w = up(p + "qkv.weight", {3 * E, E});
      b.qkv_b = up(p + "qkv.bias", {3 * E});
      b.proj_w = up(p + "proj.weight", {E, E});
      b.proj_b = up(p + "proj.bias", {E});
      b.norm2_w = up(p + "norm2.weight", {E});
      b.norm2_b = up(p + "norm2.bias", {E});
      b.fc1_w = up(p + "fc1.weight", {F, E});
      b.fc1_b = up(p + "fc1.bias", {F});
      b.fc2_w = up(p + "fc2.weight", {E, F});
      b.fc2_b = up(p + "fc2.bias", {E});
      n.blocks.push_back(std::move(b));
    }
    n.norm_w = up(prefix + "norm.weight", {E});
    n.norm_b = up(prefix + "norm.bias", {E});
    n.ones = upload_host(std::vector<float>(size_t(E), 1.f), {E}, arena, ctx, dtype);
    return n;
  };
  enc = net("vae.encoder.", v.encoder_dim, v.encoder_heads, v.encoder_depth);
  enc.in_w = up("vae.encoder.patch_embed.weight", {v.encoder_dim, Pd});
  enc.in_b = up("vae.encoder.patch_embed.bias", {v.encoder_dim});
  enc.out_w = up("vae.encoder.to_latent.weight", {C, v.encoder_dim});
  enc.out_b = up("vae.encoder.to_latent.bias", {C});
  dec = net("vae.decoder.", v.decoder_dim, v.decoder_heads, v.decoder_depth);
  // from_latent reads latent / scaling_factor (reference: decode): the division folded into its weight once.
  {
    const Tensor w = file.get("vae.decoder.from_latent.weight", {v.decoder_dim, C});
    std::vector<float> scaled(size_t(w.numel()));
    for (size_t i = 0; i < scaled.size(); ++i) scaled[i] = float(double(w.ptr<float>()[i]) / v.scaling_factor);
    dec.in_w = upload_host(scaled, {v.decoder_dim, C}, arena, ctx, dtype);
  }
  dec.in_b = up("vae.decoder.from_latent.bias", {v.decoder_dim});
  dec.out_w = up("vae.decoder.to_pixels.weight", {Pd, v.decoder_dim});
  dec.out_b = up("vae.decoder.to_pixels.bias", {Pd});
  rope = upload_host(pixel_rope_table(cfg.latent_height(), cfg.latent_width(), v.rope_dim, v.rope_max_freq),
                     {cfg.vae_tokens(), v.rope_dim, 2}, arena, ctx, dtype);
}

VAE::VAE(const OasisConfig& cfg, const VAEWeights& weights, Arena& arena, DType dtype)
    : cfg_(cfg), w_(weights), state_(arena) {
  const int64_t N = cfg.vae_tokens(), E = std::max(cfg.vae.encoder_dim, cfg.vae.decoder_dim);
  image_ = arena.alloc({3, cfg.frame_height, cfg.frame_width}, dtype);
  patches_ = arena.alloc({N, cfg.vae_patch_dim()}, dtype);
  x_ = arena.alloc({N * E}, dtype);
  hn_ = arena.alloc({N * E}, dtype);
  qkv_ = arena.alloc({N * 3 * E}, dtype);
  q_ = arena.alloc({N * E}, dtype);
  k_ = arena.alloc({N * E}, dtype);
  v_ = arena.alloc({N * E}, dtype);
  attn_ = arena.alloc({N * E}, dtype);
  mlp_ = arena.alloc({N * E * cfg.vae.mlp_ratio}, dtype);
  z_ = arena.alloc({N, cfg.latent_channels}, dtype);
}

Tensor VAE::buf(const Tensor& t, std::vector<int64_t> shape) const { return view(t, 0, std::move(shape)); }

bool VAE::blocks(const Context& ctx, const VAEWeights::Net& net, Tensor& x, const std::atomic<bool>* cancel) {
  const int64_t N = cfg_.vae_tokens(), E = net.dim, H = net.heads, hd = E / H, F = E * cfg_.vae.mlp_ratio;
  const float eps = float(cfg_.vae.norm_eps);
  Tensor hn = buf(hn_, {N, E}), qkv = buf(qkv_, {N, 3 * E}), q = buf(q_, {H, N, hd});
  Tensor k = buf(k_, {1, N, H, hd}), v = buf(v_, {1, N, H, hd}), attn = buf(attn_, {N, E}), mlp = buf(mlp_, {N, F});
  const Context sc = state_.over(ctx);
  const ops::RopeParams unused{{int(hd), 0, 0}, 1.0, 1};  // the rotation comes from the table
  for (const VAEWeights::Block& b : net.blocks) {
    if (cancel && cancel->load(std::memory_order_relaxed)) return false;
    // x += proj(attention(RoPE(q), RoPE(k), v)) over LN1(x); x += fc2(GELU(fc1(LN2(x)))).
    ops::layernorm_modulate(ctx, x, b.norm1_b, b.norm1_w, eps, hn, 0.f);
    ops::linear(ctx, hn, b.qkv_w, b.qkv_b, qkv);
    ops::rope_qkv_split(sc, qkv, unused, q, k, v, &w_.rope);
    ops::attention(sc, q, k, v, attn);
    ops::linear(ctx, attn, b.proj_w, b.proj_b, x, ops::Epilogue::gated_residual, &net.ones);
    ops::layernorm_modulate(ctx, x, b.norm2_b, b.norm2_w, eps, hn, 0.f);
    ops::linear(ctx, hn, b.fc1_w, b.fc1_b, mlp, ops::Epilogue::gelu_erf);
    ops::linear(ctx, mlp, b.fc2_w, b.fc2_b, x, ops::Epilogue::gated_residual, &net.ones);
  }
  ops::layernorm_modulate(ctx, x, net.norm_b, net.norm_w, eps, hn, 0.f);
  return true;
}

void VAE::prepare_kernels(const Context& ctx) {
  // The blocks share shapes, so each half's first block stands for all of its blocks (the ViT's attention is one
  // frame's 576 tokens against themselves: no cache, so one shape a half).
  const int64_t N = cfg_.vae_tokens();
  for (const VAEWeights::Net* net : {&w_.enc, &w_.dec}) {
    if (net->blocks.empty()) continue;
    const int64_t E = net->dim, H = net->heads, hd = E / H, F = E * cfg_.vae.mlp_ratio;
    const VAEWeights::Block& b = net->blocks.front();
    Tensor hn = buf(hn_, {N, E}), qkv = buf(qkv_, {N, 3 * E}), q = buf(q_, {H, N, hd}), x = buf(x_, {N, E});
    Tensor k = buf(k_, {1, N, H, hd}), v = buf(v_, {1, N, H, hd}), attn = buf(attn_, {N, E}), mlp = buf(mlp_, {N, F});
    ops::linear_prepare(ctx, hn, b.qkv_w, b.qkv_b, qkv);
    ops::attention_prepare(state_.over(ctx), q, k, v, attn);
    ops::linear_prepare(ctx, attn, b.proj_w, b.proj_b, x);
    ops::linear_prepare(ctx, hn, b.fc1_w, b.fc1_b, mlp, ops::Epilogue::gelu_erf);
    ops::linear_prepare(ctx, mlp, b.fc2_w, b.fc2_b, x);
  }
}

bool VAE::decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel) {
  const VAEWeights::Net& net = w_.dec;
  const int64_t N = cfg_.vae_tokens(), E = net.dim;
  Tensor z = z_, x = buf(x_, {N, E}), hn = buf(hn_, {N, E});
  ops::patchify(ctx, latent, 1, z);  // tokens row-major, one latent vector each
  ops::linear(ctx, z, net.in_w, net.in_b, x);
  if (!blocks(ctx, net, x, cancel)) return false;
  ops::linear(ctx, hn, net.out_w, net.out_b, patches_);
  ops::unpatchify_axpy(ctx, patches_, cfg_.vae.patch_size, 1.f, image_, 0.f);  // image = unpatchify(patches)
  ops::to_uint8(ctx, image_, frame, ops::Pixels::truncated);
  return true;
}

void VAE::encode(const Context& ctx, const Tensor& frame, Tensor& latent) {
  const VAEWeights::Net& net = w_.enc;
  const int64_t N = cfg_.vae_tokens(), E = net.dim;
  Tensor x = buf(x_, {N, E}), hn = buf(hn_, {N, E});
  ops::from_uint8(ctx, frame, image_, ops::Pixels::truncated);
  ops::patchify(ctx, image_, cfg_.vae.patch_size, patches_);
  ops::linear(ctx, patches_, net.in_w, net.in_b, x);
  blocks(ctx, net, x, nullptr);
  ops::linear(ctx, hn, net.out_w, net.out_b, z_);
  // latent = scaling_factor * mean: the [N, C] tokens back to [C, h, w] (patch 1), scaled on the way.
  ops::unpatchify_axpy(ctx, z_, 1, float(cfg_.vae.scaling_factor), latent, 0.f);
}

}  // namespace oasis
}  // namespace model
}  // namespace nfd
