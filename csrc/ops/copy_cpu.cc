// Host-to-host copy: same dtype -> memcpy; f32 <-> bf16 converts (round to nearest even). f16 is a CUDA dtype.
#include <cstring>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

static float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void copy(const Context& ctx, const Tensor& src, Tensor& dst) {
  NFD_CHECK(src.defined() && dst.defined(), invalid_argument, "ops::copy: undefined tensor");
  NFD_CHECK(src.device == Device::cpu && dst.device == Device::cpu, invalid_argument,
            "ops::copy (cpu): both tensors must be on the cpu");
  NFD_CHECK(src.shape == dst.shape, invalid_argument,
            "ops::copy: shapes differ: " + src.describe() + " -> " + dst.describe());
  const int64_t n = src.numel();
  if (src.dtype == dst.dtype) {
    std::memmove(dst.data, src.data, src.bytes());
  } else if (src.dtype == DType::f32 && dst.dtype == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) dst.ptr<uint16_t>()[i] = f32_to_bf16(src.ptr<float>()[i]);
  } else if (src.dtype == DType::bf16 && dst.dtype == DType::f32) {
    for (int64_t i = 0; i < n; ++i) dst.ptr<float>()[i] = bf16_to_f32(src.ptr<uint16_t>()[i]);
  } else {
    fail(ErrorKind::unsupported, "ops::copy (cpu): no conversion " + src.describe() + " -> " + dst.describe());
  }
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
