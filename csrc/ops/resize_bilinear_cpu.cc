// ops::resize_bilinear on the CPU (contract checked in ops/resize_bilinear.cc): each output pixel from its four
// sources (ops/resize_bilinear_math.h), h0 (w0 a + w1 b) + h1 (w0 c + w1 d) in fp32, PyTorch's order
// (bf16 sources widened, the result rounded once).
#include <type_traits>
#include <vector>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"
#include "ops/resize_bilinear_math.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void resize_bilinear(const Context& ctx, const Tensor& x, Tensor& out) {
  const bool bf16 = cpu_bf16("resize_bilinear", out);
  const int64_t C = x.dim(0), H = x.dim(1), W = x.dim(2), Ho = out.dim(1), Wo = out.dim(2);
  std::vector<tile::Lerp> cols(static_cast<size_t>(Wo));
  for (int64_t j = 0; j < Wo; ++j) cols[size_t(j)] = tile::bilinear_source(int(j), int(W), int(Wo));
  auto run = [&](const auto* in, auto* o) {
    using T = std::remove_pointer_t<decltype(o)>;
    ::nfd::cpu::parallel_for(ctx.threads, C * Ho, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c = t / Ho, i = t % Ho;
        const tile::Lerp r = tile::bilinear_source(int(i), int(H), int(Ho));
        const T* a = in + (c * H + r.i0) * W;
        const T* b = in + (c * H + r.i1) * W;
        T* row = o + t * Wo;
        for (int64_t j = 0; j < Wo; ++j) {
          const tile::Lerp& q = cols[size_t(j)];
          row[j] = from_float<T>(r.w0 * (q.w0 * to_float(a[q.i0]) + q.w1 * to_float(a[q.i1])) +
                                 r.w1 * (q.w0 * to_float(b[q.i0]) + q.w1 * to_float(b[q.i1])));
        }
      }
    }, ::nfd::cpu::grain_for(4 * Wo));
  };
  if (bf16)
    run(x.ptr<bf16_t>(), out.ptr<bf16_t>());
  else
    run(x.ptr<float>(), out.ptr<float>());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
