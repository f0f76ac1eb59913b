// Helpers shared by the model code: uploading weights once to the session's device/dtype, and tensor views.
#pragma once

#include <string>
#include <vector>

#include "backends/device.h"
#include "core/error.h"
#include "core/model_file.h"
#include "ops/ops.h"

namespace nfd {
namespace model {

// A weight of the file (fp32 on the host), copied once into `arena` as `dtype`.
inline Tensor upload(const ModelFile& file, const std::string& name, const std::vector<int64_t>& shape,
                     Arena& arena, const Context& ctx, DType dtype) {
  Tensor host = file.get(name, shape);
  Tensor t = arena.alloc(shape, dtype, Arena::Use::weights);
  if (!arena.measuring()) ops::copy(ctx, host, t);
  return t;
}

// Values the architecture computes on the host (a RoPE table, a time-embedding table), uploaded once into `arena` as
// `dtype` (a measuring arena only counts the bytes).
Tensor upload_host(const std::vector<float>& values, const std::vector<int64_t>& shape, Arena& arena,
                   const Context& ctx, DType dtype);

// Rows fc2(SiLU(fc1(features[r]))) of the MLP `prefix` of the file (fc1 [D, E], fc2 [D, D], with biases) for the
// `rows` rows of `features` [rows, E]: each row computed on the host in fp32 as a one-token pass would (the
// time embedding of every noise level a frame uses, once per model), then uploaded as [rows, D].
Tensor host_embed_mlp(const ModelFile& file, const std::string& prefix, const std::vector<float>& features,
                      int64_t rows, int64_t E, int64_t D, Arena& arena, const Context& ctx, DType dtype);

// A FrameState that never changes, in the arena's device memory: frame 0, slot 0 written and the only one seen. For
// attention within one frame over a one-slot K/V buffer (the Oasis DiT's spatial attention, its ViT's attention):
// `over(ctx)` is ctx reading this state instead of the frame's. Not movable (over() points at `host`).
class FixedFrameState {
 public:
  explicit FixedFrameState(Arena& arena);
  FixedFrameState(const FixedFrameState&) = delete;
  FixedFrameState& operator=(const FixedFrameState&) = delete;
  Context over(const Context& ctx) const;

 private:
  Tensor device_;
  FrameState host_{};
};

// A view of `shape` starting `offset` elements into `t` (no copy).
inline Tensor view(const Tensor& t, int64_t offset, std::vector<int64_t> shape) {
  Tensor v;
  v.dtype = t.dtype;
  v.device = t.device;
  v.shape = std::move(shape);
  NFD_CHECK(offset >= 0 && offset + v.numel() <= t.numel(), internal, "view outside of " + t.describe());
  v.data = static_cast<char*>(t.data) + size_t(offset) * dtype_size(t.dtype);
  return v;
}

}  // namespace model
}  // namespace nfd
