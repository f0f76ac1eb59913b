// ops::pixel_shuffle on the CPU (contract checked in ops/pixel_shuffle.cc): a copy through the index map of
// ops/ops.h, out[c, h r + i, w r + j] = x[c r^2 + i r + j, h, w] (inverse: the same pairs, copied the other way).
// A copy of elements, so fp32 and bf16 alike (bit for bit).
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

template <typename T>
static void shuffle(const Context& ctx, const T* in, T* o, int64_t R, int64_t Cs, int64_t H, int64_t W,
                    bool inverse) {
  ::nfd::cpu::parallel_for(ctx.threads, Cs * H, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {  // t = (channel of the small side, row)
      const int64_t cs = t / H, h = t % H, c = cs / (R * R), i = (cs / R) % R, j = cs % R;
      for (int64_t w = 0; w < W; ++w) {
        const int64_t s = (cs * H + h) * W + w, b = (c * H * R + h * R + i) * W * R + w * R + j;
        if (inverse) o[s] = in[b];
        else o[b] = in[s];
      }
    }
  }, ::nfd::cpu::grain_for(W));
}

void pixel_shuffle(const Context& ctx, const Tensor& x, int r, bool inverse, Tensor& out) {
  const Tensor& small = inverse ? out : x;  // [C r^2, H, W]
  const int64_t Cs = small.dim(0), H = small.dim(1), W = small.dim(2);
  if (cpu_bf16("pixel_shuffle", out))
    shuffle(ctx, x.ptr<bf16_t>(), out.ptr<bf16_t>(), r, Cs, H, W, inverse);
  else
    shuffle(ctx, x.ptr<float>(), out.ptr<float>(), r, Cs, H, W, inverse);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
