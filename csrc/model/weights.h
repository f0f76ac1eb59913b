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
