#include "model/waypoint/taehv.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

namespace nfd {
namespace model {
namespace waypoint {

TAEHVWeights::TAEHVWeights(const ModelFile& file, const WaypointConfig& cfg, Arena& arena, const Context& ctx,
                           DType dtype) {
  const TAEHVConfig& t = cfg.taehv;
  const std::vector<int>& ch = t.decoder_channels;
  const int64_t p2 = int64_t(t.patch_size) * t.patch_size, E = t.encoder_channels;
  auto conv = [&](const std::string& name, int64_t cin, int64_t cout, int64_t k, bool bias) {
    Conv c;
    c.w = upload(file, name + ".weight", {cout, cin, k, k}, arena, ctx, dtype);
    if (bias) c.b = upload(file, name + ".bias", {cout}, arena, ctx, dtype);
    return c;
  };
  auto memblock = [&](const std::string& p, int64_t n) {
    return MemBlock{conv(p + ".conv1", 2 * n, n, 3, true), conv(p + ".conv2", n, n, 3, true),
                    conv(p + ".conv3", n, n, 3, true)};
  };
  const std::string e = "taehv.encoder.";
  enc.conv_in = conv(e + "conv_in", 3 * p2, E, 3, true);
  for (int s = 0; s < 3; ++s)
    enc.pools[s] = conv(e + "pools." + std::to_string(s), E * (t.time_downscale[size_t(s)] ? 2 : 1), E, 1, false).w;
  for (int s = 0; s < 3; ++s) enc.downs[s] = conv(e + "downs." + std::to_string(s), E, E, 3, false).w;
  for (int s = 0; s < 3; ++s)
    for (int b = 0; b < 3; ++b)
      enc.blocks[s][b] = memblock(e + "blocks." + std::to_string(s) + "." + std::to_string(b), E);
  enc.conv_out = conv(e + "conv_out", E, cfg.latent_channels, 3, true);
  const std::string d = "taehv.decoder.";
  dec.conv_in = conv(d + "conv_in", cfg.latent_channels, ch[0], 3, true);
  for (int s = 0; s < 3; ++s) {
    const int64_t n = ch[size_t(s)], stride = t.time_upscale[size_t(s)] ? 2 : 1;
    for (int b = 0; b < 3; ++b)
      dec.blocks[s][b] = memblock(d + "blocks." + std::to_string(s) + "." + std::to_string(b), n);
    dec.grows[s] = conv(d + "grows." + std::to_string(s), n, n * stride, 1, false).w;
    dec.convs[s] = conv(d + "convs." + std::to_string(s), n, ch[size_t(s) + 1], 3, false).w;
  }
  dec.conv_out = conv(d + "conv_out", ch[3], 3 * p2, 3, true);
}

namespace {

// One frame x [c, H, W] through a memory block: y = ReLU(conv3(ReLU(conv2(ReLU(conv1([x, mem]))))) + x), then
// mem = x (the next frame's past). cat [2c, H, W], t1 and t2 [c, H, W] are scratch; y is apart from x.
void memblock(const Context& ctx, const TAEHVWeights::MemBlock& blk, Tensor& mem, const Tensor& x, Tensor& y,
              Tensor& cat, Tensor& t1, Tensor& t2) {
  const int64_t c = x.dim(0), HW = x.dim(1) * x.dim(2);
  Tensor cat_x = view(cat, 0, x.shape), cat_past = view(cat, c * HW, x.shape);
  ops::copy(ctx, x, cat_x);
  ops::copy(ctx, mem, cat_past);
  ops::copy(ctx, x, mem);
  ops::conv2d(ctx, cat, blk.conv1.w, blk.conv1.b, 1, 1, t1, nullptr, ops::Activation::relu);
  ops::conv2d(ctx, t1, blk.conv2.w, blk.conv2.b, 1, 1, t2, nullptr, ops::Activation::relu);
  ops::conv2d(ctx, t2, blk.conv3.w, blk.conv3.b, 1, 1, y, &x, ops::Activation::relu);
}

// Frame i of a buffer of frames [n, c, H, W].
Tensor frame_of(const Tensor& t, int64_t i) {
  return view(t, i * (t.numel() / t.dim(0)), {t.dim(1), t.dim(2), t.dim(3)});
}

// Zeroes every tensor of `mem` (a memory block's past before the first frame).
void zero(const Context& ctx, std::vector<Tensor>& mem) {
  size_t most = 0;
  for (const Tensor& m : mem) most = std::max(most, m.bytes());
  const std::vector<uint8_t> zeros(most, 0);
  for (Tensor& m : mem) device_memcpy(m.data, ctx.device, zeros.data(), Device::cpu, m.bytes(), ctx.stream);
  device_synchronize(ctx.device, ctx.stream);
}

}  // namespace

Decoder::Decoder(const WaypointConfig& cfg, const TAEHVWeights& weights, Arena& arena, DType dtype)
    : cfg_(cfg), w_(weights.dec) {
  const TAEHVConfig& t = cfg.taehv;
  const std::vector<int>& ch = t.decoder_channels;
  int64_t H = cfg.latent_height(), W = cfg.latent_width(), n = 1;
  lat_ = arena.alloc({cfg.latent_channels, H, W}, dtype);
  for (int s = 0; s < 3; ++s) {
    strides_[s] = t.time_upscale[size_t(s)] ? 2 : 1;
    const int64_t c = ch[size_t(s)];
    xs_[s] = arena.alloc({n, c, H, W}, dtype);
    ys_[s] = arena.alloc({n, c, H, W}, dtype);
    cat_[s] = arena.alloc({2 * c, H, W}, dtype);
    t1_[s] = arena.alloc({c, H, W}, dtype);
    t2_[s] = arena.alloc({c, H, W}, dtype);
    grow_[s] = arena.alloc({c * strides_[s], H, W}, dtype);
    for (int b = 0; b < 3; ++b) mem_.push_back(arena.alloc({c, H, W}, dtype));
    n *= strides_[s];
    H *= 2;
    W *= 2;
  }
  // The last stage's frames go through the head one at a time: only one is held.
  up_ = arena.alloc({ch[2], H, W}, dtype);
  xs_[3] = arena.alloc({1, ch[3], H, W}, dtype);
  const int64_t p = t.patch_size;
  head_ = arena.alloc({3 * p * p, H, W}, dtype);
  image_ = arena.alloc({3, H * p, W * p}, dtype);
  if (cfg.output_height != cfg.frame_height || cfg.output_width != cfg.frame_width)
    resized_ = arena.alloc({3, cfg.output_height, cfg.output_width}, dtype);
}

void Decoder::reset(const Context& ctx) {
  zero(ctx, mem_);
  primed_ = false;
}

void Decoder::run(const Context& ctx, const Tensor& latent, Tensor* frames) {
  const std::vector<int>& ch = cfg_.taehv.decoder_channels;
  const Tensor none;
  ops::softcap(ctx, latent, 3.f, lat_);
  {
    Tensor x0 = frame_of(xs_[0], 0);
    ops::conv2d(ctx, lat_, w_.conv_in.w, w_.conv_in.b, 1, 1, x0, nullptr, ops::Activation::relu);
  }
  int m = 0;
  int64_t n = 1;  // frames at this stage
  for (int s = 0; s < 3; ++s) {
    const int64_t c = ch[size_t(s)], H = xs_[s].dim(2), W = xs_[s].dim(3);
    Tensor* in = &xs_[s];
    Tensor* out = &ys_[s];
    for (int b = 0; b < 3; ++b, ++m) {
      for (int64_t i = 0; i < n; ++i) {  // in time order: each frame's past is the one before it
        Tensor y = frame_of(*out, i);
        memblock(ctx, w_.blocks[s][b], mem_[size_t(m)], frame_of(*in, i), y, cat_[s], t1_[s], t2_[s]);
      }
      std::swap(in, out);
    }
    const bool last = s == 2;
    if (last && !frames) return;  // priming: the state is advanced, no frame is needed
    const int stride = strides_[s];
    for (int64_t i = 0; i < n; ++i) {
      // grow_s is a 1x1 convolution without bias: it commutes with the nearest upsampling, so it runs at the
      // smaller size. Channel chunk j of its output is frame j of this frame's stride.
      ops::conv2d(ctx, frame_of(*in, i), w_.grows[s], none, 1, 0, grow_[s]);
      for (int j = 0; j < stride; ++j) {
        const Tensor g = view(grow_[s], int64_t(j) * c * H * W, {c, H, W});
        if (!last) {
          Tensor next = frame_of(xs_[s + 1], i * stride + j);
          ops::upsample2x_conv2d(ctx, g, w_.convs[s], none, next);
          continue;
        }
        // The head: conv_out(ReLU(x)) (the ReLU as convs_2's activation), clamp to [0, 1], pixel shuffle, resize.
        ops::upsample_nearest2x(ctx, g, up_);
        Tensor x3 = frame_of(xs_[3], 0);
        ops::conv2d(ctx, up_, w_.convs[s], none, 1, 1, x3, nullptr, ops::Activation::relu);
        ops::conv2d(ctx, x3, w_.conv_out.w, w_.conv_out.b, 1, 1, head_, nullptr, ops::Activation::clamp01);
        ops::pixel_shuffle(ctx, head_, cfg_.taehv.patch_size, false, image_);
        const Tensor* img = &image_;
        if (resized_.defined()) {
          ops::resize_bilinear(ctx, image_, resized_);
          img = &resized_;
        }
        const int64_t f = i * stride + j, Ho = cfg_.output_height, Wo = cfg_.output_width;
        Tensor out_frame = view(*frames, f * Ho * Wo * 3, {Ho, Wo, 3});
        ops::to_uint8(ctx, *img, out_frame, ops::Pixels::unit);
      }
    }
    n *= stride;
  }
}

bool Decoder::decode(const Context& ctx, const Tensor& latent, Tensor& frames, const std::atomic<bool>* cancel) {
  if (cancel && cancel->load()) return false;
  NFD_CHECK(frames.numel() == int64_t(cfg_.taehv.frames_per_latent()) * cfg_.output_height * cfg_.output_width * 3,
            internal, "waypoint::Decoder::decode: frames is " + frames.describe());
  if (!primed_) {
    for (int i = 0; i + 1 < cfg_.taehv.frames_per_latent(); ++i) run(ctx, latent, nullptr);
    primed_ = true;
  }
  run(ctx, latent, &frames);
  return true;
}

void Decoder::copy_state_from(const Context& ctx, const Decoder& other) {
  for (size_t i = 0; i < mem_.size(); ++i) ops::copy(ctx, other.mem_[i], mem_[i]);
  primed_ = other.primed_;
}

size_t Decoder::state_bytes() const {
  size_t n = 4;
  for (const Tensor& m : mem_) n += m.bytes();
  return n;
}

void Decoder::save_state(const Context& ctx, uint8_t* out) const {
  size_t at = 0;
  for (const Tensor& m : mem_) {
    device_memcpy(out + at, Device::cpu, m.data, ctx.device, m.bytes(), ctx.stream);
    at += m.bytes();
  }
  device_synchronize(ctx.device, ctx.stream);
  const uint32_t primed = primed_ ? 1u : 0u;
  std::memcpy(out + at, &primed, 4);
}

void Decoder::load_state(const Context& ctx, const uint8_t* in) {
  size_t at = 0;
  for (Tensor& m : mem_) {
    device_memcpy(m.data, ctx.device, in + at, Device::cpu, m.bytes(), ctx.stream);
    at += m.bytes();
  }
  device_synchronize(ctx.device, ctx.stream);
  uint32_t primed = 0;
  std::memcpy(&primed, in + at, 4);
  primed_ = primed != 0;
}

Encoder::Encoder(const WaypointConfig& cfg, const TAEHVWeights& weights, Arena& arena, DType dtype)
    : cfg_(cfg), w_(weights.enc) {
  const TAEHVConfig& t = cfg.taehv;
  const int64_t E = t.encoder_channels, p = t.patch_size;
  int64_t H = cfg.frame_height / p, W = cfg.frame_width / p, n = t.frames_per_latent();
  img_ = arena.alloc({3, cfg.output_height, cfg.output_width}, dtype);
  if (cfg.output_height != cfg.frame_height || cfg.output_width != cfg.frame_width)
    resized_ = arena.alloc({3, cfg.frame_height, cfg.frame_width}, dtype);
  unshuffled_ = arena.alloc({3 * p * p, H, W}, dtype);
  for (int s = 0; s < 3; ++s) {
    strides_[s] = t.time_downscale[size_t(s)] ? 2 : 1;
    if (s == 0) group_ = arena.alloc({strides_[0], E, H, W}, dtype);
    pooled_[s] = arena.alloc({E, H, W}, dtype);
    n /= strides_[s];
    H = (H + 1) / 2;  // the stride-2 convolution's output (pad 1, kernel 3)
    W = (W + 1) / 2;
    out_[s] = arena.alloc({n, E, H, W}, dtype);
    for (Tensor* b : {&fa_[s], &fb_[s], &t1_[s], &t2_[s]}) *b = arena.alloc({E, H, W}, dtype);
    cat_[s] = arena.alloc({2 * E, H, W}, dtype);
    for (int b = 0; b < 3; ++b) mem_.push_back(arena.alloc({E, H, W}, dtype));
  }
}

void Encoder::reset(const Context& ctx) { zero(ctx, mem_); }

void Encoder::encode(const Context& ctx, const Tensor& frames, Tensor& latent) {
  const int64_t E = cfg_.taehv.encoder_channels, Ho = cfg_.output_height, Wo = cfg_.output_width;
  const Tensor none;
  // Stage s over one group of stride_s consecutive frames (side by side in channels): the pool, the down step, the
  // three memory blocks; the result is frame g of out_[s].
  auto stage = [&](int s, const Tensor& group, int64_t g) {
    ops::conv2d(ctx, group, w_.pools[s], none, 1, 0, pooled_[s]);
    ops::conv2d(ctx, pooled_[s], w_.downs[s], none, 2, 1, fa_[s]);
    const int m = 3 * s;
    memblock(ctx, w_.blocks[s][0], mem_[size_t(m)], fa_[s], fb_[s], cat_[s], t1_[s], t2_[s]);
    memblock(ctx, w_.blocks[s][1], mem_[size_t(m + 1)], fb_[s], fa_[s], cat_[s], t1_[s], t2_[s]);
    Tensor out = frame_of(out_[s], g);
    memblock(ctx, w_.blocks[s][2], mem_[size_t(m + 2)], fa_[s], out, cat_[s], t1_[s], t2_[s]);
  };
  const int64_t groups0 = out_[0].dim(0);
  for (int64_t g = 0; g < groups0; ++g) {
    for (int j = 0; j < strides_[0]; ++j) {  // each frame: u / 255, resized, unshuffled, conv_in
      const Tensor u8 = view(frames, (g * strides_[0] + j) * Ho * Wo * 3, {Ho, Wo, 3});
      ops::from_uint8(ctx, u8, img_, ops::Pixels::unit);
      const Tensor* img = &img_;
      if (resized_.defined()) {
        ops::resize_bilinear(ctx, img_, resized_);
        img = &resized_;
      }
      ops::pixel_shuffle(ctx, *img, cfg_.taehv.patch_size, true, unshuffled_);
      Tensor x = frame_of(group_, j);
      ops::conv2d(ctx, unshuffled_, w_.conv_in.w, w_.conv_in.b, 1, 1, x, nullptr, ops::Activation::relu);
    }
    stage(0, view(group_, 0, {strides_[0] * E, group_.dim(2), group_.dim(3)}), g);
  }
  for (int s = 1; s < 3; ++s) {
    const Tensor& in = out_[s - 1];
    const int64_t per = in.numel() / in.dim(0);  // one frame's values
    for (int64_t g = 0; g < out_[s].dim(0); ++g)
      stage(s, view(in, g * strides_[s] * per, {strides_[s] * E, in.dim(2), in.dim(3)}), g);
  }
  ops::conv2d(ctx, frame_of(out_[2], 0), w_.conv_out.w, w_.conv_out.b, 1, 1, latent);
}

}  // namespace waypoint
}  // namespace model
}  // namespace nfd
