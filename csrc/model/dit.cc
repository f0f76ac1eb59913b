#include "model/dit.h"

#include <cmath>
#include <string>

#include "model/weights.h"

namespace nfd {
namespace model {

// Sinusoidal features of t * 1000 as the reference (timestep_features): angles in double, features in fp32.
static std::vector<float> timestep_features(float t, int dim) {
  const int half = dim / 2;
  std::vector<float> f(size_t(2 * half));
  for (int i = 0; i < half; ++i) {
    double freq = std::exp(-std::log(10000.0) * double(i) / double(half));
    double arg = (double(t) * 1000.0) * freq;
    f[size_t(i)] = float(std::cos(arg));
    f[size_t(half + i)] = float(std::sin(arg));
  }
  return f;
}

DiT::DiT(const ModelFile& file, const Config& cfg, Arena& arena, const Context& ctx, DType dtype, int cache_slots)
    : cfg_(cfg) {
  const int64_t D = cfg.hidden_size, A = cfg.action_dim, P = cfg.patch_dim(), F = int64_t(cfg.mlp_ratio) * D;
  const int64_t N = cfg.tokens_per_frame(), H = cfg.num_heads, hd = cfg.head_dim(), E = cfg.time_embed_dim;
  const int64_t passes = cfg.num_steps() + 1;
  auto up = [&](const std::string& name, std::vector<int64_t> shape) {
    return upload(file, name, shape, arena, ctx, dtype);
  };
  patch_w_ = up("dit.patch_embed.weight", {D, P});
  patch_b_ = up("dit.patch_embed.bias", {D});
  act_fc1_w_ = up("dit.action_embed.fc1.weight", {D, A});
  act_fc1_b_ = up("dit.action_embed.fc1.bias", {D});
  act_fc2_w_ = up("dit.action_embed.fc2.weight", {D, D});
  act_fc2_b_ = up("dit.action_embed.fc2.bias", {D});
  final_adaln_w_ = up("dit.final.adaln.weight", {2 * D, D});
  final_adaln_b_ = up("dit.final.adaln.bias", {2 * D});
  final_w_ = up("dit.final.linear.weight", {P, D});
  final_b_ = up("dit.final.linear.bias", {P});
  for (int l = 0; l < cfg.depth; ++l) {
    const std::string p = "dit.blocks." + std::to_string(l) + ".";
    Block b;
    b.adaln_w = up(p + "adaln.weight", {6 * D, D});
    b.adaln_b = up(p + "adaln.bias", {6 * D});
    b.qkv_w = up(p + "qkv.weight", {3 * D, D});
    b.qkv_b = up(p + "qkv.bias", {3 * D});
    b.proj_w = up(p + "proj.weight", {D, D});
    b.proj_b = up(p + "proj.bias", {D});
    b.fc1_w = up(p + "fc1.weight", {F, D});
    b.fc1_b = up(p + "fc1.bias", {F});
    b.fc2_w = up(p + "fc2.weight", {D, F});
    b.fc2_b = up(p + "fc2.bias", {D});
    b.k_cache = arena.alloc({cache_slots, N, H, hd}, dtype, Arena::Use::kv_cache);  // token-major: see ops::rope_qkv_split
    b.v_cache = arena.alloc({cache_slots, N, H, hd}, dtype, Arena::Use::kv_cache);
    kv_bytes_ += b.k_cache.bytes() + b.v_cache.bytes();
    blocks_.push_back(std::move(b));
  }

  // Time embeddings depend only on t: one fp32 host MLP per pass position, then uploaded.
  Context host{Device::cpu, ctx.threads, nullptr, nullptr};
  Tensor w1 = file.get("dit.time_embed.fc1.weight", {D, E}), b1 = file.get("dit.time_embed.fc1.bias", {D});
  Tensor w2 = file.get("dit.time_embed.fc2.weight", {D, D}), b2 = file.get("dit.time_embed.fc2.bias", {D});
  std::vector<float> feat, h1(static_cast<size_t>(D)), h1s(static_cast<size_t>(D)), zero(static_cast<size_t>(D), 0.f),
      table(static_cast<size_t>(passes * D));
  for (int64_t k = 0; k < passes; ++k) {
    float t = k < cfg.num_steps() ? cfg.schedule[size_t(k)] : cfg.context_noise;
    feat = timestep_features(t, int(E));
    Tensor tf{feat.data(), DType::f32, Device::cpu, {1, E}};
    Tensor th{h1.data(), DType::f32, Device::cpu, {1, D}}, ths{h1s.data(), DType::f32, Device::cpu, {D}};
    Tensor tz{zero.data(), DType::f32, Device::cpu, {D}}, tout{&table[size_t(k * D)], DType::f32, Device::cpu, {1, D}};
    ops::linear(host, tf, w1, b1, th);
    Tensor th1 = th;
    th1.shape = {D};
    ops::add_silu(host, th1, tz, ths);
    ths.shape = {1, D};
    ops::linear(host, ths, w2, b2, tout);
  }
  temb_ = arena.alloc({passes, D}, dtype);
  if (!arena.measuring()) ops::copy(ctx, Tensor{table.data(), DType::f32, Device::cpu, {passes, D}}, temb_);

  rope_.rope_dims[0] = cfg.rope_dims[0];
  rope_.rope_dims[1] = cfg.rope_dims[1];
  rope_.rope_dims[2] = cfg.rope_dims[2];
  rope_.theta = cfg.rope_theta;
  rope_.grid_cols = cfg.grid_cols();

  zeros_ = arena.alloc({D}, dtype);
  act_h_ = arena.alloc({D}, dtype);
  act_hs_ = arena.alloc({D}, dtype);
  act_emb_ = arena.alloc({D}, dtype);
  cond_ = arena.alloc({passes, D}, dtype);
  mod_ = arena.alloc({cfg.depth, passes, 6 * D}, dtype);
  final_mod_ = arena.alloc({passes, 2 * D}, dtype);
  tokens_ = arena.alloc({N, P}, dtype);
  h_ = arena.alloc({N, D}, dtype);
  hn_ = arena.alloc({N, D}, dtype);
  qkv_ = arena.alloc({N, 3 * D}, dtype);
  q_ = arena.alloc({H, N, hd}, dtype);
  attn_ = arena.alloc({N, D}, dtype);
  mlp_ = arena.alloc({N, F}, dtype);
  vel_ = arena.alloc({N, P}, dtype);

  // The GEMM engine of every linear shape of a frame, timed once here (CUDA; a no-op on the CPU). The layers
  // share shapes, so block 0 stands for all.
  Tensor act = arena.alloc({1, A}, dtype);  // stands for the session's action (a few bytes)
  if (arena.measuring()) return;            // tensors without data: nothing to time
  const Block& b0 = blocks_[0];
  Tensor act_h = view(act_h_, 0, {1, D}), act_emb = view(act_emb_, 0, {1, D});
  ops::linear_prepare(ctx, act, act_fc1_w_, act_fc1_b_, act_h);
  ops::linear_prepare(ctx, view(act_hs_, 0, {1, D}), act_fc2_w_, act_fc2_b_, act_emb);
  Tensor m0 = view(mod_, 0, {passes, 6 * D});
  ops::linear_prepare(ctx, cond_, b0.adaln_w, b0.adaln_b, m0);
  ops::linear_prepare(ctx, cond_, final_adaln_w_, final_adaln_b_, final_mod_);
  ops::linear_prepare(ctx, tokens_, patch_w_, patch_b_, h_);
  ops::linear_prepare(ctx, hn_, b0.qkv_w, b0.qkv_b, qkv_);
  ops::linear_prepare(ctx, attn_, b0.proj_w, b0.proj_b, h_, ops::Epilogue::gated_residual);
  ops::linear_prepare(ctx, hn_, b0.fc1_w, b0.fc1_b, mlp_, ops::Epilogue::gelu_tanh);
  ops::linear_prepare(ctx, mlp_, b0.fc2_w, b0.fc2_b, h_, ops::Epilogue::gated_residual);
  ops::linear_prepare(ctx, hn_, final_w_, final_b_, vel_);
}

void DiT::condition(const Context& ctx, const Tensor& action) {
  const int64_t D = cfg_.hidden_size, A = cfg_.action_dim, passes = cfg_.num_steps() + 1;
  // action_embed = fc2(silu(fc1(a))), as rows of one token.
  Tensor a = view(action, 0, {1, A}), h = view(act_h_, 0, {1, D}), hs = view(act_hs_, 0, {1, D});
  Tensor emb = view(act_emb_, 0, {1, D});
  ops::linear(ctx, a, act_fc1_w_, act_fc1_b_, h);
  ops::add_silu(ctx, act_h_, zeros_, act_hs_);
  ops::linear(ctx, hs, act_fc2_w_, act_fc2_b_, emb);
  for (int64_t k = 0; k < passes; ++k) {
    Tensor c = view(cond_, k * D, {D});
    ops::add_silu(ctx, view(temb_, k * D, {D}), act_emb_, c);
  }
  // Every pass position's adaLN vectors of a block in one GEMM (rows = pass positions): the weights are read
  // once per frame, not once per pass.
  for (int l = 0; l < cfg_.depth; ++l) {
    Tensor m = view(mod_, l * passes * 6 * D, {passes, 6 * D});
    ops::linear(ctx, cond_, blocks_[size_t(l)].adaln_w, blocks_[size_t(l)].adaln_b, m);
  }
  ops::linear(ctx, cond_, final_adaln_w_, final_adaln_b_, final_mod_);
}

void DiT::forward(const Context& ctx, int k, const Tensor& latent, bool full) {
  const int64_t D = cfg_.hidden_size, passes = cfg_.num_steps() + 1;
  const float eps = cfg_.norm_eps;
  ops::patchify(ctx, latent, cfg_.patch_size, tokens_);
  ops::linear(ctx, tokens_, patch_w_, patch_b_, h_);
  for (int l = 0; l < cfg_.depth; ++l) {
    Block& b = blocks_[size_t(l)];
    // adaLN chunks: shift1, scale1, gate1, shift2, scale2, gate2.
    auto mod = [&](int i) { return view(mod_, (int64_t(l) * passes + k) * 6 * D + i * D, {D}); };
    Tensor shift1 = mod(0), scale1 = mod(1), gate1 = mod(2), shift2 = mod(3), scale2 = mod(4), gate2 = mod(5);
    ops::layernorm_modulate(ctx, h_, shift1, scale1, eps, hn_);
    ops::linear(ctx, hn_, b.qkv_w, b.qkv_b, qkv_);
    ops::rope_qkv_split(ctx, qkv_, rope_, q_, b.k_cache, b.v_cache);
    if (!full && l == cfg_.depth - 1) return;  // cache-write pass: the last block's K/V are all that is needed
    ops::attention(ctx, q_, b.k_cache, b.v_cache, attn_);
    ops::linear(ctx, attn_, b.proj_w, b.proj_b, h_, ops::Epilogue::gated_residual, &gate1);
    ops::layernorm_modulate(ctx, h_, shift2, scale2, eps, hn_);
    ops::linear(ctx, hn_, b.fc1_w, b.fc1_b, mlp_, ops::Epilogue::gelu_tanh);
    ops::linear(ctx, mlp_, b.fc2_w, b.fc2_b, h_, ops::Epilogue::gated_residual, &gate2);
  }
  Tensor shift = view(final_mod_, int64_t(k) * 2 * D, {D}), scale = view(final_mod_, int64_t(k) * 2 * D + D, {D});
  ops::layernorm_modulate(ctx, h_, shift, scale, eps, hn_);
  ops::linear(ctx, hn_, final_w_, final_b_, vel_);
}

void DiT::denoise_pass(const Context& ctx, int k, float dt, Tensor& latent) {
  NFD_CHECK(k >= 0 && k < cfg_.num_steps(), internal, "DiT::denoise_pass: bad pass index");
  forward(ctx, k, latent, true);
  ops::unpatchify_axpy(ctx, vel_, cfg_.patch_size, dt, latent);
}

void DiT::cache_write_pass(const Context& ctx, const Tensor& latent) { forward(ctx, cfg_.num_steps(), latent, false); }

}  // namespace model
}  // namespace nfd
