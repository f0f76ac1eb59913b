#include "model/oasis/dit.h"

#include <cmath>
#include <string>

namespace nfd {
namespace model {
namespace oasis {

namespace {

// torch.linspace(a, b, n) in float64, entry i: a + step i for the first half, b - step (n - 1 - i) for the rest.
double linspace(double a, double b, int n, int i) {
  if (n == 1) return a;
  const double step = (b - a) / double(n - 1);
  return i < n / 2 ? std::fma(step, double(i), a) : std::fma(-step, double(n - 1 - i), b);
}

// Sinusoidal features of an integer noise level: [cos(l f_i), sin(l f_i)], f_i = 10000^(-i / half) (the level
// itself, as upstream's TimestepEmbedder); angles in double, features in fp32 (reference: level_features).
std::vector<float> level_features(int level, int dim) {
  const int half = dim / 2;
  std::vector<float> f(size_t(2 * half));
  for (int i = 0; i < half; ++i) {
    const double freq = std::exp(-std::log(10000.0) * double(i) / double(half));
    const double arg = double(level) * freq;
    f[size_t(i)] = float(std::cos(arg));
    f[size_t(half + i)] = float(std::sin(arg));
  }
  return f;
}

}  // namespace

std::vector<float> pixel_rope_table(int rows, int cols, int dim, double max_freq) {
  const int n = dim / 2;
  std::vector<double> freqs(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) freqs[size_t(j)] = linspace(1.0, max_freq / 2.0, n, j) * M_PI;
  std::vector<float> out(size_t(rows) * cols * dim * 2);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      float* t = &out[(size_t(r) * cols + c) * dim * 2];
      const double rp = linspace(-1.0, 1.0, rows, r), cp = linspace(-1.0, 1.0, cols, c);
      for (int j = 0; j < dim; ++j) {
        const double angle = j < n ? rp * freqs[size_t(j)] : cp * freqs[size_t(j - n)];
        t[2 * j] = float(std::cos(angle));
        t[2 * j + 1] = float(std::sin(angle));
      }
    }
  return out;
}

DiTWeights::DiTWeights(const ModelFile& file, const OasisConfig& cfg, Arena& arena, const Context& ctx, DType dtype) {
  const int64_t D = cfg.hidden_size, A = cfg.action_dim, P = cfg.patch_dim(), F = int64_t(cfg.mlp_ratio) * D;
  const int64_t E = cfg.time_embed_dim, passes = cfg.num_steps() + 1;
  auto up = [&](const std::string& name, std::vector<int64_t> shape) {
    return upload(file, name, shape, arena, ctx, dtype);
  };
  patch_w = up("dit.patch_embed.weight", {D, P});
  patch_b = up("dit.patch_embed.bias", {D});
  act_w = up("dit.action_embed.weight", {D, A});
  act_b = up("dit.action_embed.bias", {D});
  for (int l = 0; l < cfg.depth; ++l) {
    Block b;
    for (int s = 0; s < 2; ++s) {
      const std::string p = "dit.blocks." + std::to_string(l) + (s == 0 ? ".spatial." : ".temporal.");
      SubBlock& sb = b.sub[s];
      sb.adaln_w = up(p + "adaln.weight", {6 * D, D});
      sb.adaln_b = up(p + "adaln.bias", {6 * D});
      sb.qkv_w = up(p + "qkv.weight", {3 * D, D});
      sb.proj_w = up(p + "proj.weight", {D, D});
      sb.proj_b = up(p + "proj.bias", {D});
      sb.fc1_w = up(p + "fc1.weight", {F, D});
      sb.fc1_b = up(p + "fc1.bias", {F});
      sb.fc2_w = up(p + "fc2.weight", {D, F});
      sb.fc2_b = up(p + "fc2.bias", {D});
    }
    blocks.push_back(std::move(b));
  }
  final_adaln_w = up("dit.final.adaln.weight", {2 * D, D});
  final_adaln_b = up("dit.final.adaln.bias", {2 * D});
  final_w = up("dit.final.linear.weight", {P, D});
  final_b = up("dit.final.linear.bias", {P});
  // The time embedding of every level a frame's passes use: the DDIM steps' levels, then context_level.
  std::vector<float> feats;
  for (int64_t k = 0; k < passes; ++k) {
    const int level = k < cfg.num_steps() ? cfg.timesteps[size_t(k)] : cfg.context_level;
    const std::vector<float> f = level_features(level, int(E));
    feats.insert(feats.end(), f.begin(), f.end());
  }
  temb = host_embed_mlp(file, "dit.time_embed", feats, passes, E, D, arena, ctx, dtype);
  const int64_t N = cfg.tokens_per_frame(), R = cfg.spatial_rope_dim;
  spatial_rope = upload_host(pixel_rope_table(cfg.grid_rows(), cfg.grid_cols(), int(R), cfg.spatial_rope_max_freq),
                             {N, R, 2}, arena, ctx, dtype);
}

DiT::Activations::Activations(const OasisConfig& cfg, Arena& arena, DType dtype, int cap) {
  capacity = cap;
  const int64_t D = cfg.hidden_size, P = cfg.patch_dim(), F = int64_t(cfg.mlp_ratio) * D;
  const int64_t N = cfg.tokens_per_frame(), H = cfg.num_heads, hd = cfg.head_dim(), rows = int64_t(cap) * N;
  tokens = arena.alloc({rows, P}, dtype);
  h = arena.alloc({rows, D}, dtype);
  hn = arena.alloc({rows, D}, dtype);
  qkv = arena.alloc({rows, 3 * D}, dtype);
  q = arena.alloc({H, N, hd}, dtype);  // one member at a time: RoPE then attention
  ks = arena.alloc({1, N, H, hd}, dtype);  // the spatial attention's K / V: the frame's own, slot 0
  vs = arena.alloc({1, N, H, hd}, dtype);
  attn = arena.alloc({rows, D}, dtype);
  mlp = arena.alloc({rows, F}, dtype);
  tmp = arena.alloc({rows, D}, dtype);  // a branch GEMM's output before its gated residual
  vel = arena.alloc({rows, P}, dtype);
}

DiT::DiT(const OasisConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype, int cache_slots)
    : cfg_(cfg),
      w_(weights),
      kv_(arena, cfg.depth, {cache_slots, cfg.tokens_per_frame(), cfg.num_heads, cfg.head_dim()}, dtype),
      spatial_state_(arena),
      own_(cfg, arena, dtype, 1) {
  const int64_t D = cfg.hidden_size, N = cfg.tokens_per_frame(), hd = cfg.head_dim();
  const int64_t passes = cfg.num_steps() + 1;
  temporal_rope_.rope_dims[0] = int(hd);
  temporal_rope_.rope_dims[1] = temporal_rope_.rope_dims[2] = 0;
  temporal_rope_.theta = cfg.temporal_rope_theta;
  temporal_rope_.grid_cols = int(N);
  act_emb_ = arena.alloc({1, D}, dtype);
  cond_ = arena.alloc({passes, D}, dtype);
  mod_[0] = arena.alloc({cfg.depth, passes, 6 * D}, dtype);
  mod_[1] = arena.alloc({cfg.depth, passes, 6 * D}, dtype);
  final_mod_ = arena.alloc({passes, 2 * D}, dtype);
}

void DiT::prepare_kernels(const Context& ctx, const Tensor& action) {
  // The layers share shapes, so block 0 stands for all; batched shapes (step_batch) fall back to CUTLASS.
  const int64_t D = cfg_.hidden_size, passes = cfg_.num_steps() + 1;
  const DiTWeights::SubBlock& s0 = w_.blocks[0].sub[0];
  ops::linear_prepare(ctx, view(action, 0, {1, cfg_.action_dim}), w_.act_w, w_.act_b, act_emb_);
  Tensor m0 = view(mod_[0], 0, {passes, 6 * D});
  ops::linear_prepare(ctx, cond_, s0.adaln_w, s0.adaln_b, m0);
  ops::linear_prepare(ctx, cond_, w_.final_adaln_w, w_.final_adaln_b, final_mod_);
  Activations& a = own_;
  const Tensor none;
  ops::linear_prepare(ctx, a.tokens, w_.patch_w, w_.patch_b, a.h);
  ops::linear_prepare(ctx, a.hn, s0.qkv_w, none, a.qkv);
  ops::linear_prepare(ctx, a.attn, s0.proj_w, s0.proj_b, a.tmp);
  ops::linear_prepare(ctx, a.hn, s0.fc1_w, s0.fc1_b, a.mlp, ops::Epilogue::gelu_tanh);
  ops::linear_prepare(ctx, a.mlp, s0.fc2_w, s0.fc2_b, a.tmp);
  ops::linear_prepare(ctx, a.hn, w_.final_w, w_.final_b, a.vel);
  ops::attention_prepare(spatial_state_.over(ctx), a.q, a.ks, a.vs, a.attn);
}

void DiT::condition(const Context& ctx, const Tensor& action) {
  const int64_t D = cfg_.hidden_size, passes = cfg_.num_steps() + 1;
  ops::linear(ctx, view(action, 0, {1, cfg_.action_dim}), w_.act_w, w_.act_b, act_emb_);
  const Tensor emb = view(act_emb_, 0, {D});
  for (int64_t k = 0; k < passes; ++k) {
    Tensor c = view(cond_, k * D, {D});
    ops::add_silu(ctx, view(w_.temb, k * D, {D}), emb, c);
  }
  // Every pass's adaLN vectors of a sub-block in one GEMM (rows = passes): the weights are read once per frame.
  for (int l = 0; l < cfg_.depth; ++l)
    for (int s = 0; s < 2; ++s) {
      Tensor m = view(mod_[s], int64_t(l) * passes * 6 * D, {passes, 6 * D});
      const DiTWeights::SubBlock& sb = w_.blocks[size_t(l)].sub[s];
      ops::linear(ctx, cond_, sb.adaln_w, sb.adaln_b, m);
    }
  ops::linear(ctx, cond_, w_.final_adaln_w, w_.final_adaln_b, final_mod_);
}

static Tensor rows(const Tensor& t, int64_t b, int64_t n) { return member_rows(t, b, n); }

void DiT::forward(const std::vector<Member>& members, int k, bool full, Activations& act) {
  NFD_CHECK(!members.empty() && int(members.size()) <= act.capacity, internal, "oasis::DiT::forward: bad member count");
  const OasisConfig& cfg = members[0].dit->cfg_;
  const DiTWeights& w = members[0].dit->w_;
  const int64_t D = cfg.hidden_size, N = cfg.tokens_per_frame(), P = cfg.patch_dim(), passes = cfg.num_steps() + 1;
  const int64_t B = int64_t(members.size()), M = B * N;
  const float eps = float(cfg.norm_eps);
  const Context& ctx = members[0].ctx;  // the batch-wide GEMMs
  auto all = [&](const Tensor& t) { return view(t, 0, {M, t.dim(1)}); };
  Tensor tokens = all(act.tokens), h = all(act.h), hn = all(act.hn), qkv = all(act.qkv), attn = all(act.attn);
  Tensor mlp = all(act.mlp), tmp = all(act.tmp);
  const Tensor no_bias;
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = rows(tokens, b, N);
    ops::patchify(members[size_t(b)].ctx, members[size_t(b)].latent, cfg.patch_size, tb);
  }
  ops::linear(ctx, tokens, w.patch_w, w.patch_b, h);
  // As the NFD DiT: a branch (proj, fc2) runs its GEMM over every member's rows into tmp and its gated residual
  // h += gate * tmp is folded into the layernorm that follows (ops::gated_add_layernorm_modulate). `pending` is the
  // gate waiting in tmp: its chunk (2: proj, 5: fc2), sub-block (0 spatial, 1 temporal) and layer.
  struct Pending {
    int chunk = -1, sub = 0, l = 0;
  } pending;
  auto ctx_of = [&](int64_t b) -> const Context& { return members[size_t(b)].ctx; };
  auto gate_of = [&](int64_t b) {
    return view(members[size_t(b)].dit->mod_[pending.sub], ((int64_t(pending.l) * passes + k) * 6 + pending.chunk) * D,
                {D});
  };
  // hn = LayerNorm(h) * (1 + scale) + shift per member (mod_of(b, i): its chunk i), after the pending residual.
  auto norm = [&](const auto& mod_of, int shift_i, int scale_i) {
    adaln_norm(B, N, h, hn, tmp, pending.chunk >= 0, eps, ctx_of, mod_of, shift_i, scale_i, gate_of);
    pending = {};
  };
  for (int l = 0; l < cfg.depth; ++l) {
    for (int s = 0; s < 2; ++s) {
      const DiTWeights::SubBlock& sb = w.blocks[size_t(l)].sub[s];
      const bool temporal = s == 1;
      const bool last = !full && temporal && l == cfg.depth - 1;  // cache-write pass: the last K/V are all it needs
      auto mod = [&](int64_t b, int i) {
        return view(members[size_t(b)].dit->mod_[s], ((int64_t(l) * passes + k) * 6 + i) * D, {D});
      };
      norm(mod, 0, 1);
      ops::linear(ctx, hn, sb.qkv_w, no_bias, qkv);
      for (int64_t b = 0; b < B; ++b) {
        const Member& m = members[size_t(b)];
        DiT& d = *m.dit;
        Tensor ab = rows(attn, b, N);
        if (temporal) {
          ops::rope_qkv_split(m.ctx, rows(qkv, b, N), d.temporal_rope_, act.q, d.kv_.k[size_t(l)],
                              d.kv_.v[size_t(l)]);
          if (!last)
            ops::attention(m.ctx, act.q, d.kv_.k[size_t(l)], d.kv_.v[size_t(l)], ab, ops::AttentionKeys::same_token);
        } else {
          // The frame's own K/V into slot 0 of ks / vs, rotated by the table (the RopeParams are not read).
          const Context sc = d.spatial_state_.over(m.ctx);
          ops::rope_qkv_split(sc, rows(qkv, b, N), d.temporal_rope_, act.q, act.ks, act.vs, &w.spatial_rope);
          ops::attention(sc, act.q, act.ks, act.vs, ab);
        }
      }
      if (last) return;
      ops::linear(ctx, attn, sb.proj_w, sb.proj_b, tmp);
      pending = {2, s, l};
      norm(mod, 3, 4);
      ops::linear(ctx, hn, sb.fc1_w, sb.fc1_b, mlp, ops::Epilogue::gelu_tanh);
      ops::linear(ctx, mlp, sb.fc2_w, sb.fc2_b, tmp);
      pending = {5, s, l};
    }
  }
  // The final layer's adaLN: shift and scale of pass k.
  norm([&](int64_t b, int i) { return view(members[size_t(b)].dit->final_mod_, (int64_t(k) * 2 + i) * D, {D}); }, 0,
       1);
  Tensor vel = view(act.vel, 0, {M, P});
  ops::linear(ctx, hn, w.final_w, w.final_b, vel);
}

void DiT::denoise_pass(const std::vector<Member>& members, int k, float a, float b, Activations& act) {
  const OasisConfig& cfg = members.at(0).dit->cfg_;
  NFD_CHECK(k >= 0 && k < cfg.num_steps(), internal, "oasis::DiT::denoise_pass: bad pass index");
  forward(members, k, true, act);
  const int64_t N = cfg.tokens_per_frame();
  for (size_t i = 0; i < members.size(); ++i) {
    Tensor latent = members[i].latent;
    ops::unpatchify_axpy(members[i].ctx, rows(act.vel, int64_t(i), N), cfg.patch_size, b, latent, a);
  }
}

void DiT::cache_write_pass(const std::vector<Member>& members, Activations& act) {
  forward(members, members.at(0).dit->cfg_.num_steps(), false, act);
}

}  // namespace oasis
}  // namespace model
}  // namespace nfd
