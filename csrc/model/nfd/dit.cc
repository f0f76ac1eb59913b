#include "model/nfd/dit.h"

#include <cmath>
#include <string>

#include "model/weights.h"

namespace nfd {
namespace model {
namespace nfd_arch {

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

DiTWeights::DiTWeights(const ModelFile& file, const NfdConfig& cfg, Arena& arena, const Context& ctx, DType dtype) {
  const int64_t D = cfg.hidden_size, A = cfg.action_dim, P = cfg.patch_dim(), F = int64_t(cfg.mlp_ratio) * D;
  const int64_t E = cfg.time_embed_dim, passes = cfg.num_steps() + 1;
  auto up = [&](const std::string& name, std::vector<int64_t> shape) {
    return upload(file, name, shape, arena, ctx, dtype);
  };
  patch_w = up("dit.patch_embed.weight", {D, P});
  patch_b = up("dit.patch_embed.bias", {D});
  act_fc1_w = up("dit.action_embed.fc1.weight", {D, A});
  act_fc1_b = up("dit.action_embed.fc1.bias", {D});
  act_fc2_w = up("dit.action_embed.fc2.weight", {D, D});
  act_fc2_b = up("dit.action_embed.fc2.bias", {D});
  final_adaln_w = up("dit.final.adaln.weight", {2 * D, D});
  final_adaln_b = up("dit.final.adaln.bias", {2 * D});
  final_w = up("dit.final.linear.weight", {P, D});
  final_b = up("dit.final.linear.bias", {P});
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
    blocks.push_back(std::move(b));
  }

  // Time embeddings depend only on t: one fp32 host MLP per pass position, then uploaded.
  std::vector<float> feats;
  for (int64_t k = 0; k < passes; ++k) {
    const float t = k < cfg.num_steps() ? cfg.schedule[size_t(k)] : cfg.context_noise;
    const std::vector<float> f = timestep_features(t, int(E));
    feats.insert(feats.end(), f.begin(), f.end());
  }
  temb = host_embed_mlp(file, "dit.time_embed", feats, passes, E, D, arena, ctx, dtype);
}

DiT::Activations::Activations(const NfdConfig& cfg, Arena& arena, DType dtype, int cap) {
  capacity = cap;
  const int64_t D = cfg.hidden_size, P = cfg.patch_dim(), F = int64_t(cfg.mlp_ratio) * D;
  const int64_t N = cfg.tokens_per_frame(), H = cfg.num_heads, hd = cfg.head_dim(), rows = int64_t(cap) * N;
  tokens = arena.alloc({rows, P}, dtype);
  h = arena.alloc({rows, D}, dtype);
  hn = arena.alloc({rows, D}, dtype);
  qkv = arena.alloc({rows, 3 * D}, dtype);
  q = arena.alloc({H, N, hd}, dtype);  // one member at a time: RoPE then attention
  attn = arena.alloc({rows, D}, dtype);
  mlp = arena.alloc({rows, F}, dtype);
  tmp = arena.alloc({rows, D}, dtype);  // a branch GEMM's output before its gated residual (DiT::forward)
  vel = arena.alloc({rows, P}, dtype);
}

DiT::DiT(const NfdConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype, int cache_slots)
    : cfg_(cfg),
      w_(weights),
      kv_(arena, cfg.depth, {cache_slots, cfg.tokens_per_frame(), cfg.num_heads, cfg.head_dim()}, dtype) {
  const int64_t D = cfg.hidden_size, passes = cfg.num_steps() + 1;
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
  own_ = Activations(cfg, arena, dtype, 1);
}

void DiT::prepare_kernels(const Context& ctx, const Tensor& action) {
  // The layers share shapes, so block 0 stands for all; batched shapes (step_batch) fall back to CUTLASS.
  const int64_t D = cfg_.hidden_size, passes = cfg_.num_steps() + 1;
  const DiTWeights::Block& b0 = w_.blocks[0];
  Tensor act = view(action, 0, {1, cfg_.action_dim});
  Tensor act_h = view(act_h_, 0, {1, D}), act_hs = view(act_hs_, 0, {1, D}), act_emb = view(act_emb_, 0, {1, D});
  ops::linear_prepare(ctx, act, w_.act_fc1_w, w_.act_fc1_b, act_h);
  ops::linear_prepare(ctx, act_hs, w_.act_fc2_w, w_.act_fc2_b, act_emb);
  Tensor m0 = view(mod_, 0, {passes, 6 * D});
  ops::linear_prepare(ctx, cond_, b0.adaln_w, b0.adaln_b, m0);
  ops::linear_prepare(ctx, cond_, w_.final_adaln_w, w_.final_adaln_b, final_mod_);
  Activations& a = own_;
  ops::linear_prepare(ctx, a.tokens, w_.patch_w, w_.patch_b, a.h);
  ops::linear_prepare(ctx, a.hn, b0.qkv_w, b0.qkv_b, a.qkv);
  ops::linear_prepare(ctx, a.attn, b0.proj_w, b0.proj_b, a.tmp);  // gated residual: in the next norm
  ops::linear_prepare(ctx, a.hn, b0.fc1_w, b0.fc1_b, a.mlp, ops::Epilogue::gelu_tanh);
  ops::linear_prepare(ctx, a.mlp, b0.fc2_w, b0.fc2_b, a.tmp);
  ops::linear_prepare(ctx, a.hn, w_.final_w, w_.final_b, a.vel);
  ops::attention_prepare(ctx, a.q, kv_.k[0], kv_.v[0], a.attn);
}

void DiT::condition(const Context& ctx, const Tensor& action) {
  const int64_t D = cfg_.hidden_size, A = cfg_.action_dim, passes = cfg_.num_steps() + 1;
  // action_embed = fc2(silu(fc1(a))), as rows of one token.
  Tensor a = view(action, 0, {1, A}), h = view(act_h_, 0, {1, D}), hs = view(act_hs_, 0, {1, D});
  Tensor emb = view(act_emb_, 0, {1, D});
  ops::linear(ctx, a, w_.act_fc1_w, w_.act_fc1_b, h);
  ops::add_silu(ctx, act_h_, zeros_, act_hs_);
  ops::linear(ctx, hs, w_.act_fc2_w, w_.act_fc2_b, emb);
  for (int64_t k = 0; k < passes; ++k) {
    Tensor c = view(cond_, k * D, {D});
    ops::add_silu(ctx, view(w_.temb, k * D, {D}), act_emb_, c);
  }
  // Every pass position's adaLN vectors of a block in one GEMM (rows = pass positions): the weights are read
  // once per frame, not once per pass.
  for (int l = 0; l < cfg_.depth; ++l) {
    Tensor m = view(mod_, l * passes * 6 * D, {passes, 6 * D});
    ops::linear(ctx, cond_, w_.blocks[size_t(l)].adaln_w, w_.blocks[size_t(l)].adaln_b, m);
  }
  ops::linear(ctx, cond_, w_.final_adaln_w, w_.final_adaln_b, final_mod_);
}

static Tensor rows(const Tensor& t, int64_t b, int64_t n) { return member_rows(t, b, n); }

void DiT::forward(const std::vector<Member>& members, int k, bool full, Activations& act) {
  NFD_CHECK(!members.empty() && int(members.size()) <= act.capacity, internal, "DiT::forward: bad member count");
  const NfdConfig& cfg = members[0].dit->cfg_;
  const DiTWeights& w = members[0].dit->w_;
  const int64_t D = cfg.hidden_size, N = cfg.tokens_per_frame(), P = cfg.patch_dim(), passes = cfg.num_steps() + 1;
  const int64_t B = int64_t(members.size()), M = B * N;
  const float eps = cfg.norm_eps;
  const Context& ctx = members[0].ctx;  // the batch-wide GEMMs
  // The first M rows of an activation (all members).
  auto all = [&](const Tensor& t) { return view(t, 0, {M, t.dim(1)}); };
  Tensor tokens = all(act.tokens), h = all(act.h), hn = all(act.hn), qkv = all(act.qkv), attn = all(act.attn);
  Tensor mlp = all(act.mlp);
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = rows(tokens, b, N);
    ops::patchify(members[size_t(b)].ctx, members[size_t(b)].latent, cfg.patch_size, tb);
  }
  ops::linear(ctx, tokens, w.patch_w, w.patch_b, h);
  // A branch (proj, fc2) runs its GEMM over every member's rows into tmp; its gated residual h += gate * tmp is
  // folded into the layernorm that follows (ops::gated_add_layernorm_modulate): the next block's first norm,
  // or the final layer's. `pending` is the gate chunk (2: proj, 5: fc2) and block of the residual waiting in tmp.
  Tensor tmp = all(act.tmp);
  struct Pending {
    int chunk = -1, l = -1;
  } pending;
  auto branch = [&](const Tensor& x, const Tensor& wt, const Tensor& bias, int chunk, int l) {
    ops::linear(ctx, x, wt, bias, tmp);
    pending = {chunk, l};
  };
  // hn = LayerNorm(h) * (1 + scale) + shift per member, after adding the pending residual.
  auto ctx_of = [&](int64_t b) -> const Context& { return members[size_t(b)].ctx; };
  auto gate_of = [&](int64_t b) {
    return view(members[size_t(b)].dit->mod_, (int64_t(pending.l) * passes + k) * 6 * D + pending.chunk * D, {D});
  };
  auto norm = [&](const auto& mod_of, int shift_i, int scale_i) {
    adaln_norm(B, N, h, hn, tmp, pending.chunk >= 0, eps, ctx_of, mod_of, shift_i, scale_i, gate_of);
    pending = {};
  };
  for (int l = 0; l < cfg.depth; ++l) {
    const DiTWeights::Block& blk = w.blocks[size_t(l)];
    const bool last = !full && l == cfg.depth - 1;  // cache-write pass: the last block's K/V are all it needs
    // adaLN chunks of member b: shift1, scale1, gate1, shift2, scale2, gate2.
    auto mod = [&](int64_t b, int i) {
      return view(members[size_t(b)].dit->mod_, (int64_t(l) * passes + k) * 6 * D + i * D, {D});
    };
    norm(mod, 0, 1);
    ops::linear(ctx, hn, blk.qkv_w, blk.qkv_b, qkv);
    for (int64_t b = 0; b < B; ++b) {
      const Member& m = members[size_t(b)];
      DiT& d = *m.dit;
      ops::rope_qkv_split(m.ctx, rows(qkv, b, N), d.rope_, act.q, d.kv_.k[size_t(l)], d.kv_.v[size_t(l)]);
      if (last) continue;
      Tensor ab = rows(attn, b, N);
      ops::attention(m.ctx, act.q, d.kv_.k[size_t(l)], d.kv_.v[size_t(l)], ab);
    }
    if (last) return;
    branch(attn, blk.proj_w, blk.proj_b, 2, l);
    norm(mod, 3, 4);
    ops::linear(ctx, hn, blk.fc1_w, blk.fc1_b, mlp, ops::Epilogue::gelu_tanh);
    branch(mlp, blk.fc2_w, blk.fc2_b, 5, l);
  }
  // The final layer's adaLN: shift and scale of pass k.
  norm([&](int64_t b, int i) { return view(members[size_t(b)].dit->final_mod_, (int64_t(k) * 2 + i) * D, {D}); }, 0,
       1);
  Tensor vel = view(act.vel, 0, {M, P});
  ops::linear(ctx, hn, w.final_w, w.final_b, vel);
}

void DiT::denoise_pass(const std::vector<Member>& members, int k, float dt, Activations& act) {
  const NfdConfig& cfg = members.at(0).dit->cfg_;
  NFD_CHECK(k >= 0 && k < cfg.num_steps(), internal, "DiT::denoise_pass: bad pass index");
  forward(members, k, true, act);
  const int64_t N = cfg.tokens_per_frame();
  for (size_t b = 0; b < members.size(); ++b) {
    Tensor latent = members[b].latent;
    ops::unpatchify_axpy(members[b].ctx, rows(act.vel, int64_t(b), N), cfg.patch_size, dt, latent);
  }
}

void DiT::cache_write_pass(const std::vector<Member>& members, Activations& act) {
  forward(members, members.at(0).dit->cfg_.num_steps(), false, act);
}

void DiT::denoise_pass(const Context& ctx, int k, float dt, Tensor& latent) {
  denoise_pass({Member{this, ctx, latent}}, k, dt, own_);
}

void DiT::cache_write_pass(const Context& ctx, const Tensor& latent) {
  cache_write_pass({Member{this, ctx, latent}}, own_);
}

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
