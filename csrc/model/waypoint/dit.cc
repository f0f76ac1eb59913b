#include "model/waypoint/dit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace nfd {
namespace model {
namespace waypoint {

namespace {

constexpr float kRmsEps = 1.1920928955078125e-07f;  // 2^-23: F.rms_norm's default eps for float32

Tensor host_tensor(std::vector<float>& v, std::vector<int64_t> shape) {
  return Tensor{v.data(), DType::f32, Device::cpu, std::move(shape)};
}

// SiLU(a[r] + b) of each row r of a [rows, D] (b [D], or none), in float as F.silu.
std::vector<float> silu_rows(const std::vector<float>& a, const float* b, int64_t rows, int64_t D) {
  std::vector<float> out(a.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; ++d) {
      const float v = a[size_t(r * D + d)] + (b ? b[d] : 0.f);
      out[size_t(r * D + d)] = v / (1.f + std::exp(-v));
    }
  return out;
}

}  // namespace

std::vector<float> spatial_rope_table(const WaypointConfig& c) {
  const int hd = c.head_dim(), dxy = hd / 8, rows = c.grid_rows(), cols = c.grid_cols();
  const int n = (dxy + 1) / 2;
  const double top = double(std::min(rows, cols)) * c.rope_nyquist / 2.0;
  std::vector<double> f(static_cast<size_t>(dxy));  // each linspace value for two adjacent pairs
  for (int i = 0; i < dxy; ++i) {
    const int k = i / 2;
    const double lin = n > 1 ? 1.0 + (top - 1.0) * double(k) / double(n - 1) : 1.0;
    f[size_t(i)] = lin * M_PI;
  }
  std::vector<float> out(size_t(rows) * cols * 2 * dxy * 2);
  for (int r = 0; r < rows; ++r)
    for (int col = 0; col < cols; ++col) {
      const double px = double(2 * col + 1) / cols - 1.0, py = double(2 * r + 1) / rows - 1.0;
      float* t = &out[(size_t(r) * cols + col) * 2 * dxy * 2];
      for (int i = 0; i < 2 * dxy; ++i) {  // column pairs, then row pairs
        const double angle = i < dxy ? px * f[size_t(i)] : py * f[size_t(i - dxy)];
        t[2 * i] = float(std::cos(angle));
        t[2 * i + 1] = float(std::sin(angle));
      }
    }
  return out;
}

std::vector<float> noise_features(double sigma, int n) {
  const int half = n / 2;
  std::vector<float> out(static_cast<size_t>(2 * half));
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(10000.0, -double(i) / double(std::max(half - 1, 1)));
    const double phase = sigma * 1000.0 * freq;
    out[size_t(i)] = float(std::sin(phase) * std::sqrt(2.0));
    out[size_t(half + i)] = float(std::cos(phase) * std::sqrt(2.0));
  }
  return out;
}

DiTWeights::DiTWeights(const ModelFile& file, const WaypointConfig& cfg, Arena& arena, const Context& ctx,
                       DType dtype) {
  const int64_t D = cfg.hidden_size, M = int64_t(cfg.mlp_ratio) * D, P = cfg.patch_dim(), A = cfg.control_dim();
  const int64_t passes = cfg.passes(), nf = cfg.noise_features, depth = cfg.depth;
  auto up = [&](const std::string& name, std::vector<int64_t> shape) {
    return upload(file, name, shape, arena, ctx, dtype);
  };
  patch_w = up("dit.patch_embed.weight", {D, P});
  ctrl_fc1_w = up("dit.control_embed.fc1.weight", {M, A});
  ctrl_fc2_w = up("dit.control_embed.fc2.weight", {D, M});
  for (int l = 0; l < cfg.depth; ++l) {
    const std::string p = "dit.blocks." + std::to_string(l) + ".";
    Block b;
    b.qkv_w = up(p + "qkv.weight", {cfg.qkv_width(), D});
    b.out_w = up(p + "out.weight", {D, D});
    if (cfg.has_control_fusion(l)) {
      b.fusion_x_w = up(p + "fusion_x.weight", {D, D});
      b.fusion_c_w = up(p + "fusion_c.weight", {D, D});
      b.fusion_out_w = up(p + "fusion_out.weight", {D, D});
    }
    b.fc1_w = up(p + "fc1.weight", {M, D});
    b.fc2_w = up(p + "fc2.weight", {D, M});
    b.v_mix = file.get(p + "v_mix", {1}).ptr<float>()[0];
    blocks.push_back(std::move(b));
  }
  final_w = up("dit.final.weight", {P, D});
  final_b = up("dit.final.bias", {P});

  // The adaLN vectors depend on the noise level alone, and the levels are the config's sigmas: every (layer, pass)
  // is computed once here, on the host in fp32 (the reference's float32 order: c = noise_embed(features(sigma)),
  // mod_proj(SiLU(c + the layer's bias)), final_mod(SiLU(c))).
  std::vector<float> mods_h(size_t(depth * passes * 6 * D)), final_h(size_t(passes * 2 * D));
  if (!arena.measuring()) {
    const Context host{Device::cpu, ctx.device == Device::cpu ? ctx.threads : 1, nullptr, nullptr};
    const Tensor none;
    std::vector<float> feats;
    for (int64_t k = 0; k < passes; ++k) {
      const std::vector<float> f = noise_features(cfg.sigmas[size_t(k)], int(nf));
      feats.insert(feats.end(), f.begin(), f.end());
    }
    std::vector<float> h1(size_t(passes * 4 * D)), c(size_t(passes * D));
    Tensor th1 = host_tensor(h1, {passes, 4 * D}), tc = host_tensor(c, {passes, D});
    ops::linear(host, host_tensor(feats, {passes, nf}), file.get("dit.noise_embed.fc1.weight", {4 * D, nf}), none,
                th1, ops::Epilogue::silu);
    ops::linear(host, th1, file.get("dit.noise_embed.fc2.weight", {D, 4 * D}), none, tc);
    const Tensor mod_w = file.get("dit.mod_proj.weight", {6 * D, D});
    std::vector<float> half(size_t(passes * 3 * D));
    Tensor thalf = host_tensor(half, {passes, 3 * D});
    for (int64_t l = 0; l < depth; ++l)
      for (int branch = 0; branch < 2; ++branch) {  // 0: attention (attn_mod_bias), 1: MLP (mlp_mod_bias)
        const std::string bias = "dit.blocks." + std::to_string(l) + (branch ? ".mlp_mod_bias" : ".attn_mod_bias");
        std::vector<float> s = silu_rows(c, file.get(bias, {D}).ptr<float>(), passes, D);
        ops::linear(host, host_tensor(s, {passes, D}), view(mod_w, branch * 3 * D * D, {3 * D, D}), none, thalf);
        for (int64_t k = 0; k < passes; ++k)
          std::memcpy(&mods_h[size_t(((l * passes + k) * 6 + 3 * branch) * D)], &half[size_t(k * 3 * D)],
                      size_t(3 * D) * sizeof(float));
      }
    std::vector<float> s = silu_rows(c, nullptr, passes, D);
    Tensor tfinal = host_tensor(final_h, {passes, 2 * D});
    ops::linear(host, host_tensor(s, {passes, D}), file.get("dit.final_mod.weight", {2 * D, D}), none, tfinal);
  }
  mods = upload_host(mods_h, {depth, passes, 6, D}, arena, ctx, dtype);
  final_mods = upload_host(final_h, {passes, 2, D}, arena, ctx, dtype);
  const int64_t N = cfg.tokens_per_frame(), hd = cfg.head_dim();
  rope = upload_host(spatial_rope_table(cfg), {N, hd / 4, 2}, arena, ctx, dtype);
  zeros = upload_host(std::vector<float>(size_t(D), 0.f), {D}, arena, ctx, dtype);
  ones = upload_host(std::vector<float>(size_t(D), 1.f), {D}, arena, ctx, dtype);
}

DiT::Activations::Activations(const WaypointConfig& cfg, Arena& arena, DType dtype, int cap) {
  capacity = cap;
  const int64_t D = cfg.hidden_size, P = cfg.patch_dim(), M = int64_t(cfg.mlp_ratio) * D;
  const int64_t N = cfg.tokens_per_frame(), rows = int64_t(cap) * N;
  tokens = arena.alloc({rows, P}, dtype);
  h = arena.alloc({rows, D}, dtype);
  hn = arena.alloc({rows, D}, dtype);
  qkv = arena.alloc({rows, cfg.qkv_width()}, dtype);
  qkv0 = arena.alloc({rows, cfg.qkv_width()}, dtype);
  q = arena.alloc({cfg.num_heads, N, cfg.head_dim()}, dtype);  // one member at a time: RoPE then attention
  attn = arena.alloc({rows, D}, dtype);
  mlp = arena.alloc({rows, M}, dtype);
  tmp = arena.alloc({rows, D}, dtype);  // a branch GEMM's output before its gated residual
  vel = arena.alloc({rows, P}, dtype);
}

DiT::DiT(const WaypointConfig& cfg, const DiTWeights& weights, Arena& arena, DType dtype,
         const std::vector<int>& cache_slots)
    : cfg_(cfg), w_(weights), own_(cfg, arena, dtype, 1) {
  const int64_t D = cfg.hidden_size, N = cfg.tokens_per_frame(), hd = cfg.head_dim();
  NFD_CHECK(cache_slots.size() == 2, internal, "waypoint::DiT: two cache groups expected");
  for (int l = 0; l < cfg.depth; ++l) {
    const std::vector<int64_t> shape{cache_slots[size_t(cfg.group_of(l))], N, cfg.num_kv_heads, hd};
    k_.push_back(arena.alloc(shape, dtype, Arena::Use::kv_cache));
    v_.push_back(arena.alloc(shape, dtype, Arena::Use::kv_cache));
    kv_bytes_ += k_.back().bytes() + v_.back().bytes();
    ops::RopeParams r{};
    r.theta = cfg.rope_theta;  // the time pairs' base; the spatial pairs come from the table
    r.grid_cols = cfg.grid_cols();
    r.qk_norm_eps = kRmsEps;
    r.deinterleave = true;
    r.time_pairs = int(hd / 4);
    r.time_scale = double(cfg.time_stride);
    r.v_mix = weights.blocks[size_t(l)].v_mix;
    rope_.push_back(r);
  }
  int control_layers = 0;
  for (int l = 0; l < cfg.depth; ++l) control_layers += cfg.has_control_fusion(l);
  ctrl_h_ = arena.alloc({1, int64_t(cfg.mlp_ratio) * D}, dtype);
  ctrl_e_ = arena.alloc({1, D}, dtype);
  ctrl_en_ = arena.alloc({1, D}, dtype);
  fusion_terms_ = arena.alloc({control_layers, D}, dtype);
}

void DiT::prepare_kernels(const Context& ctx, const Tensor& action) {
  Activations& a = own_;
  const DiTWeights::Block& b0 = w_.blocks[0];  // the layers share shapes; batched shapes take the default engine
  const Tensor none;
  ops::linear_prepare(ctx, view(action, 0, {1, cfg_.control_dim()}), w_.ctrl_fc1_w, none, ctrl_h_,
                      ops::Epilogue::silu);
  ops::linear_prepare(ctx, ctrl_h_, w_.ctrl_fc2_w, none, ctrl_e_);
  ops::linear_prepare(ctx, a.tokens, w_.patch_w, none, a.h);
  ops::linear_prepare(ctx, a.hn, b0.qkv_w, none, a.qkv);
  ops::linear_prepare(ctx, a.attn, b0.out_w, none, a.tmp);
  ops::linear_prepare(ctx, a.hn, b0.fc1_w, none, a.mlp, ops::Epilogue::silu);
  ops::linear_prepare(ctx, a.mlp, b0.fc2_w, none, a.tmp);
  ops::linear_prepare(ctx, a.hn, w_.final_w, w_.final_b, a.vel);
  // Attention (GQA) over each layer's cache group: measured once per shape (the layers of a group share it; later
  // layers are a lookup).
  Tensor out = view(a.attn, 0, {cfg_.tokens_per_frame(), cfg_.hidden_size});
  for (int l = 0; l < cfg_.depth; ++l) ops::attention_prepare(ctx, a.q, k_[size_t(l)], v_[size_t(l)], out);
}

void DiT::condition(const Context& ctx, const Tensor& action) {
  const Tensor none;
  const int64_t D = cfg_.hidden_size;
  ops::linear(ctx, view(action, 0, {1, cfg_.control_dim()}), w_.ctrl_fc1_w, none, ctrl_h_, ops::Epilogue::silu);
  ops::linear(ctx, ctrl_h_, w_.ctrl_fc2_w, none, ctrl_e_);
  ops::layernorm_modulate(ctx, ctrl_e_, w_.zeros, w_.zeros, kRmsEps, ctrl_en_, 1.f, ops::Norm::rms);
  int64_t i = 0;
  for (int l = 0; l < cfg_.depth; ++l) {
    if (!cfg_.has_control_fusion(l)) continue;
    Tensor term = view(fusion_terms_, i++ * D, {1, D});
    ops::linear(ctx, ctrl_en_, w_.blocks[size_t(l)].fusion_c_w, none, term);
  }
}

void DiT::forward(const std::vector<Member>& members, int k, bool full, Activations& act) {
  NFD_CHECK(!members.empty() && int(members.size()) <= act.capacity, internal,
            "waypoint::DiT::forward: bad member count");
  const WaypointConfig& cfg = members[0].dit->cfg_;
  const DiTWeights& w = members[0].dit->w_;
  const int64_t D = cfg.hidden_size, N = cfg.tokens_per_frame(), P = cfg.patch_dim(), passes = cfg.passes();
  const int64_t B = int64_t(members.size()), Mr = B * N;
  const Context& ctx = members[0].ctx;  // the batch-wide GEMMs
  auto all = [&](const Tensor& t) { return view(t, 0, {Mr, t.dim(1)}); };
  auto rows = [&](const Tensor& t, int64_t b) { return member_rows(t, b, N); };
  Tensor tokens = all(act.tokens), h = all(act.h), hn = all(act.hn), attn = all(act.attn), mlp = all(act.mlp);
  Tensor tmp = all(act.tmp), qkv0 = all(act.qkv0), qkv_rest = all(act.qkv);
  const Tensor none;
  // The adaLN vectors of pass k are the same for every member (they depend on the noise level alone).
  auto mod = [&](int l, int i) { return view(w.mods, ((int64_t(l) * passes + k) * 6 + i) * D, {D}); };
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = rows(tokens, b);
    ops::patchify(members[size_t(b)].ctx, members[size_t(b)].latent, cfg.patch_size, tb);
  }
  ops::linear(ctx, tokens, w.patch_w, none, h);
  // A branch (out, fc2) runs its GEMM over every member's rows into tmp; its gated residual h += gate * tmp is folded
  // into the RMS norm that follows (ops::gated_add_layernorm_modulate). `pending` is that gate.
  Tensor pending;
  auto norm = [&](const Tensor& shift, const Tensor& scale) {
    for (int64_t b = 0; b < B; ++b) {
      const Context& c = members[size_t(b)].ctx;
      Tensor hb = rows(h, b), hnb = rows(hn, b);
      if (pending.defined())
        ops::gated_add_layernorm_modulate(c, rows(tmp, b), pending, hb, shift, scale, kRmsEps, hnb, ops::Norm::rms);
      else
        ops::layernorm_modulate(c, hb, shift, scale, kRmsEps, hnb, 1.f, ops::Norm::rms);
    }
    pending = Tensor{};
  };
  int64_t control = 0;
  for (int l = 0; l < cfg.depth; ++l) {
    const DiTWeights::Block& blk = w.blocks[size_t(l)];
    const bool last = !full && l == cfg.depth - 1;  // the commit pass: the last K/V are all it needs
    norm(mod(l, 1), mod(l, 0));
    Tensor qkv = l == 0 ? qkv0 : qkv_rest;  // layer 0's stays for the value residual
    ops::linear(ctx, hn, blk.qkv_w, none, qkv);
    const int g = cfg.group_of(l);
    for (int64_t b = 0; b < B; ++b) {
      const Member& m = members[size_t(b)];
      DiT& d = *m.dit;
      const Context gc = group_context(m.ctx, g);
      const Tensor v0 = rows(qkv0, b);
      const bool mix = l > 0 && cfg.value_residual;
      ops::rope_qkv_split(gc, rows(qkv, b), d.rope_[size_t(l)], act.q, d.k_[size_t(l)], d.v_[size_t(l)], &w.rope,
                          mix ? &v0 : nullptr);
      if (!last) {
        Tensor ab = rows(attn, b);
        ops::attention(gc, act.q, d.k_[size_t(l)], d.v_[size_t(l)], ab);
      }
    }
    if (last) return;
    ops::linear(ctx, attn, blk.out_w, none, tmp);
    pending = mod(l, 2);
    if (cfg.has_control_fusion(l)) {
      norm(w.zeros, w.zeros);  // hn = RMS(h) (after the attention's residual)
      for (int64_t b = 0; b < B; ++b) {  // fusion_x(RMS(h)) + fusion_c(RMS(e)) (the member's term as the bias), SiLU
        const Member& m = members[size_t(b)];
        Tensor ab = rows(attn, b);
        ops::linear(m.ctx, rows(hn, b), blk.fusion_x_w, view(m.dit->fusion_terms_, control * D, {D}), ab,
                    ops::Epilogue::silu);
      }
      ++control;
      ops::linear(ctx, attn, blk.fusion_out_w, none, h, ops::Epilogue::gated_residual, &w.ones);
    }
    norm(mod(l, 4), mod(l, 3));
    ops::linear(ctx, hn, blk.fc1_w, none, mlp, ops::Epilogue::silu);
    ops::linear(ctx, mlp, blk.fc2_w, none, tmp);
    pending = mod(l, 5);
  }
  norm(view(w.final_mods, (int64_t(k) * 2 + 1) * D, {D}), view(w.final_mods, int64_t(k) * 2 * D, {D}));
  ops::add_silu(ctx, hn, none, hn);
  Tensor vel = view(act.vel, 0, {Mr, P});
  ops::linear(ctx, hn, w.final_w, w.final_b, vel);
}

void DiT::denoise_pass(const std::vector<Member>& members, int k, float dt, Activations& act) {
  const WaypointConfig& cfg = members.at(0).dit->cfg_;
  NFD_CHECK(k >= 0 && k < cfg.num_steps(), internal, "waypoint::DiT::denoise_pass: bad pass index");
  forward(members, k, true, act);
  const int64_t N = cfg.tokens_per_frame();
  for (size_t i = 0; i < members.size(); ++i) {
    Tensor latent = members[i].latent;
    ops::unpatchify_axpy(members[i].ctx, member_rows(act.vel, int64_t(i), N), cfg.patch_size, dt, latent, 1.f);
  }
}

void DiT::commit_pass(const std::vector<Member>& members, Activations& act) {
  forward(members, members.at(0).dit->cfg_.num_steps(), false, act);
}

void DiT::copy_cache_from(const Context& ctx, const DiT& other) {
  NFD_CHECK(k_.size() == other.k_.size(), internal, "waypoint::DiT::copy_cache_from: different models");
  for (size_t l = 0; l < k_.size(); ++l) {
    NFD_CHECK(k_[l].shape == other.k_[l].shape, internal, "waypoint::DiT::copy_cache_from: cache shapes differ");
    ops::copy(ctx, other.k_[l], k_[l]);
    ops::copy(ctx, other.v_[l], v_[l]);
  }
}

size_t DiT::slot_bytes(int g) const {
  size_t n = 0;
  for (size_t l = 0; l < k_.size(); ++l)
    if (cfg_.group_of(int(l)) == g) n += 2 * (k_[l].bytes() / size_t(k_[l].shape[0]));
  return n;
}

void DiT::save_slots(const Context& ctx, int g, const std::vector<int>& slots, uint8_t* out) const {
  save_kv_slots(ctx, k_, v_, slots, [&](size_t l) { return cfg_.group_of(int(l)) == g; }, out);
}

void DiT::load_slots(const Context& ctx, int g, const std::vector<int>& slots, const uint8_t* in) {
  load_kv_slots(ctx, k_, v_, slots, [&](size_t l) { return cfg_.group_of(int(l)) == g; }, in);
}

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
