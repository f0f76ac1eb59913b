#include "model/nfd/vae.h"

#include <algorithm>

#include "model/weights.h"

namespace nfd {
namespace model {
namespace nfd_arch {

static VAEWeights::Net load_net(const ModelFile& file, const NfdConfig& cfg_, const std::string& prefix, bool decoder,
                                Arena& arena, const Context& ctx, DType dtype) {
  using Conv = VAEWeights::Conv;
  using Norm = VAEWeights::Norm;
  using ResBlock = VAEWeights::ResBlock;
  using Level = VAEWeights::Level;
  const std::vector<int>& ch = cfg_.vae.channels;
  const int L = int(ch.size());
  auto conv = [&](const std::string& name, int64_t cout, int64_t cin, int64_t k, int stride) {
    Conv c;
    c.w = upload(file, name + ".weight", {cout, cin, k, k}, arena, ctx, dtype);
    c.b = upload(file, name + ".bias", {cout}, arena, ctx, dtype);
    c.stride = stride;
    c.pad = int(k / 2);
    return c;
  };
  auto norm = [&](const std::string& name, int64_t c) {
    return Norm{upload(file, name + ".weight", {c}, arena, ctx, dtype),
                upload(file, name + ".bias", {c}, arena, ctx, dtype)};
  };
  VAEWeights::Net n;
  const int C = cfg_.latent_channels;
  n.conv_in = decoder ? conv(prefix + "conv_in", ch[L - 1], C, 3, 1) : conv(prefix + "conv_in", ch[0], 3, 3, 1);
  int cin = decoder ? ch[L - 1] : ch[0];
  for (int k = 0; k < L; ++k) {
    const int i = decoder ? L - 1 - k : k;  // channel level of levels[k]
    const std::string lp = prefix + "levels." + std::to_string(k) + ".";
    Level lv;
    for (int r = 0; r < cfg_.vae.num_res_blocks; ++r) {
      const std::string bp = lp + "blocks." + std::to_string(r) + ".";
      ResBlock b;
      b.norm1 = norm(bp + "norm1", cin);
      b.conv1 = conv(bp + "conv1", ch[i], cin, 3, 1);
      b.norm2 = norm(bp + "norm2", ch[i]);
      b.conv2 = conv(bp + "conv2", ch[i], ch[i], 3, 1);
      if (cin != ch[i]) b.skip = conv(bp + "skip", ch[i], cin, 1, 1);
      cin = ch[i];
      lv.blocks.push_back(std::move(b));
    }
    if (decoder && i > 0) lv.resample = conv(lp + "upsample", cin, cin, 3, 1);
    if (!decoder && i < L - 1) lv.resample = conv(lp + "downsample", cin, cin, 3, 2);
    n.levels.push_back(std::move(lv));
  }
  n.norm_out = norm(prefix + "norm_out", decoder ? ch[0] : ch[L - 1]);
  n.conv_out = decoder ? conv(prefix + "conv_out", 3, ch[0], 3, 1) : conv(prefix + "conv_out", C, ch[L - 1], 3, 1);
  return n;
}

VAEWeights::VAEWeights(const ModelFile& file, const NfdConfig& cfg, Arena& arena, const Context& ctx, DType dtype,
                       bool with_encoder)
    : has_encoder(with_encoder) {
  dtype = vae_dtype(arena.device(), dtype);
  dec = load_net(file, cfg, "vae.decoder.", true, arena, ctx, dtype);
  if (with_encoder) enc = load_net(file, cfg, "vae.encoder.", false, arena, ctx, dtype);
}

VAE::VAE(const NfdConfig& cfg, const VAEWeights& weights, Arena& arena, DType session_dtype)
    : cfg_(cfg), w_(weights) {
  const DType dtype = vae_dtype(arena.device(), session_dtype);
  if (dtype != session_dtype)
    latent_ = arena.alloc({cfg.latent_channels, cfg.latent_height(), cfg.latent_width()}, dtype);
  // Largest activation: at channel level i the resolution is (H >> i, W >> i); a level's tensors have at most
  // max(ch[i-1..i+1]) channels at that or the next finer resolution (upsample output).
  const std::vector<int>& ch = cfg.vae.channels;
  int64_t need = 3 * int64_t(cfg.frame_height) * cfg.frame_width;
  const int maxc = *std::max_element(ch.begin(), ch.end());
  for (size_t i = 0; i < ch.size(); ++i) {
    int c = ch[i];
    if (i + 1 < ch.size()) c = std::max(c, ch[i + 1]);
    if (i > 0) c = std::max(c, ch[i - 1]);
    need = std::max(need, int64_t(c) * (cfg.frame_height >> i) * (cfg.frame_width >> i));
  }
  need = std::max(need, int64_t(maxc) * cfg.latent_height() * cfg.latent_width());
  for (Tensor& b : bufs_) b = arena.alloc({need}, dtype);
  image_ = arena.alloc({3, cfg.frame_height, cfg.frame_width}, dtype);
}

Tensor VAE::buf(int i, std::vector<int64_t> shape) const { return view(bufs_[i], 0, std::move(shape)); }

int VAE::run(const Context& ctx, const Net& net, bool decoder, Tensor& x, int cur, const std::atomic<bool>* cancel) {
  auto cancelled = [&] { return cancel && cancel->load(std::memory_order_relaxed); };
  const int groups = cfg_.vae.norm_groups;
  const float eps = cfg_.vae.norm_eps;
  // Picks a buffer other than those in use.
  auto other = [](int a, int b, int c = -1) {
    for (int i = 0; i < 4; ++i)
      if (i != a && i != b && i != c) return i;
    return -1;
  };
  using Conv = VAEWeights::Conv;
  using ResBlock = VAEWeights::ResBlock;
  using Level = VAEWeights::Level;
  auto conv_shape = [](const Conv& c, const Tensor& in) {
    const int64_t k = c.w.dim(2);
    return std::vector<int64_t>{c.w.dim(0), (in.dim(1) + 2 * c.pad - k) / c.stride + 1,
                                (in.dim(2) + 2 * c.pad - k) / c.stride + 1};
  };
  auto conv = [&](const Conv& c, const Tensor& in, int dst, const Tensor* residual = nullptr) {
    Tensor out = buf(dst, conv_shape(c, in));
    ops::conv2d(ctx, in, c.w, c.b, c.stride, c.pad, out, residual);
    return out;
  };
  for (const Level& lv : net.levels) {
    for (const ResBlock& b : lv.blocks) {
      if (cancelled()) return -1;
      const int t = other(cur, -1), u = other(cur, t);
      Tensor a = buf(t, x.shape);
      ops::groupnorm(ctx, x, b.norm1.gamma, b.norm1.beta, groups, eps, true, a);
      Tensor h = conv(b.conv1, a, u);
      Tensor a2 = buf(t, h.shape);
      ops::groupnorm(ctx, h, b.norm2.gamma, b.norm2.beta, groups, eps, true, a2);
      int res_buf = cur;
      Tensor residual = x;
      if (b.skip.w.defined()) {
        res_buf = u;
        residual = conv(b.skip, x, u);
      }
      const int dst = other(t, res_buf, cur);
      x = conv(b.conv2, a2, dst, &residual);
      cur = dst;
    }
    if (lv.resample.w.defined()) {
      const int t = other(cur, -1);
      if (decoder) {
        Tensor up = buf(t, {lv.resample.w.dim(0), 2 * x.dim(1), 2 * x.dim(2)});
        ops::upsample2x_conv2d(ctx, x, lv.resample.w, lv.resample.b, up);
        x = up;
        cur = t;
      } else {
        x = conv(lv.resample, x, t);
        cur = t;
      }
    }
  }
  const int t = other(cur, -1);
  Tensor a = buf(t, x.shape);
  ops::groupnorm(ctx, x, net.norm_out.gamma, net.norm_out.beta, groups, eps, true, a);
  x = a;
  return t;
}

bool VAE::decode(const Context& ctx, const Tensor& latent, Tensor& frame, const std::atomic<bool>* cancel) {
  if (latent_.defined()) ops::copy(ctx, latent, latent_);
  const Tensor& in = latent_.defined() ? latent_ : latent;
  Tensor x = buf(0, {w_.dec.conv_in.w.dim(0), latent.dim(1), latent.dim(2)});
  ops::conv2d(ctx, in, w_.dec.conv_in.w, w_.dec.conv_in.b, 1, 1, x, nullptr);
  if (run(ctx, w_.dec, true, x, 0, cancel) < 0) return false;
  if (cancel && cancel->load(std::memory_order_relaxed)) return false;
  ops::conv2d(ctx, x, w_.dec.conv_out.w, w_.dec.conv_out.b, 1, 1, image_, nullptr);
  ops::to_uint8(ctx, image_, frame);
  return true;
}

void VAE::encode(const Context& ctx, const Tensor& frame, Tensor& latent) {
  NFD_CHECK(w_.has_encoder, internal, "VAE::encode: the encoder was not loaded");
  ops::from_uint8(ctx, frame, image_);
  Tensor x = buf(0, {w_.enc.conv_in.w.dim(0), image_.dim(1), image_.dim(2)});
  ops::conv2d(ctx, image_, w_.enc.conv_in.w, w_.enc.conv_in.b, 1, 1, x, nullptr);
  run(ctx, w_.enc, false, x, 0);
  if (!latent_.defined()) return ops::conv2d(ctx, x, w_.enc.conv_out.w, w_.enc.conv_out.b, 1, 1, latent, nullptr);
  ops::conv2d(ctx, x, w_.enc.conv_out.w, w_.enc.conv_out.b, 1, 1, latent_, nullptr);
  ops::copy(ctx, latent_, latent);
}

}  // namespace nfd_arch
}  // namespace model
}  // namespace nfd
