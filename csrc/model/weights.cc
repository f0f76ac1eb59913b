#include "model/weights.h"

namespace nfd {
namespace model {

Tensor upload_host(const std::vector<float>& values, const std::vector<int64_t>& shape, Arena& arena,
                   const Context& ctx, DType dtype) {
  Tensor t = arena.alloc(shape, dtype, Arena::Use::weights);
  NFD_CHECK(int64_t(values.size()) == t.numel(), internal, "upload_host: " + std::to_string(values.size()) +
                                                               " values for " + t.describe());
  if (!arena.measuring()) ops::copy(ctx, Tensor{const_cast<float*>(values.data()), DType::f32, Device::cpu, shape}, t);
  return t;
}

Tensor host_embed_mlp(const ModelFile& file, const std::string& prefix, const std::vector<float>& features,
                      int64_t rows, int64_t E, int64_t D, Arena& arena, const Context& ctx, DType dtype) {
  Tensor table = arena.alloc({rows, D}, dtype, Arena::Use::weights);
  if (arena.measuring()) return table;
  NFD_CHECK(int64_t(features.size()) == rows * E, internal, "host_embed_mlp: features are not [rows, E]");
  Context host{Device::cpu, ctx.threads, nullptr, nullptr};
  Tensor w1 = file.get(prefix + ".fc1.weight", {D, E}), b1 = file.get(prefix + ".fc1.bias", {D});
  Tensor w2 = file.get(prefix + ".fc2.weight", {D, D}), b2 = file.get(prefix + ".fc2.bias", {D});
  std::vector<float> h1(static_cast<size_t>(D)), h1s(static_cast<size_t>(D)), zero(static_cast<size_t>(D), 0.f),
      out(static_cast<size_t>(rows * D));
  for (int64_t r = 0; r < rows; ++r) {
    Tensor tf{const_cast<float*>(&features[size_t(r * E)]), DType::f32, Device::cpu, {1, E}};
    Tensor th{h1.data(), DType::f32, Device::cpu, {1, D}}, ths{h1s.data(), DType::f32, Device::cpu, {D}};
    Tensor tz{zero.data(), DType::f32, Device::cpu, {D}}, tout{&out[size_t(r * D)], DType::f32, Device::cpu, {1, D}};
    ops::linear(host, tf, w1, b1, th);
    Tensor th1 = th;
    th1.shape = {D};
    ops::add_silu(host, th1, tz, ths);
    ths.shape = {1, D};
    ops::linear(host, ths, w2, b2, tout);
  }
  ops::copy(ctx, Tensor{out.data(), DType::f32, Device::cpu, {rows, D}}, table);
  return table;
}

FixedFrameState::FixedFrameState(Arena& arena) {
  host_.frame_index = 0;
  host_.write_slot = 0;
  host_.num_visible = 1;
  host_.visible_slots[0] = 0;
  device_ = arena.alloc({int64_t(sizeof(FrameState))}, DType::u8);
  if (!arena.measuring()) device_memcpy(device_.data, arena.device(), &host_, Device::cpu, sizeof(FrameState), nullptr);
}

Context FixedFrameState::over(const Context& ctx) const {
  Context c = ctx;
  c.state = reinterpret_cast<const FrameState*>(device_.data);
  c.host_state = &host_;
  c.host_state_fixed = true;
  return c;
}

}  // namespace model
}  // namespace nfd
