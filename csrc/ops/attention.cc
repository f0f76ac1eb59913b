// ops::attention: out[N, H*hd] = softmax(q k^T / sqrt(hd)) v per head over the visible cache slots, every token
// of them or the query's own token (math in ops/ops.h); GQA when the caches hold fewer heads than q. The contract is checked here; the backends only compute (CUDA: the head_dims its kernels take).
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

namespace {
void check_attention(const Contract& c, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                     const Tensor& out) {
  c.defined({{"q", q}, {"k_cache", k_cache}, {"v_cache", v_cache}, {"out", out}});
  c.shape({"q", q}, {-1, -1, -1}, "H, N, hd");
  const int64_t H = q.dim(0), N = q.dim(1), hd = q.dim(2);
  c.shape({"k_cache", k_cache}, {-1, N, -1, hd}, "slots, N, Hkv, hd");
  const int64_t Hkv = k_cache.dim(2);
  c.check(Hkv >= 1 && H % Hkv == 0, "k_cache's heads (Hkv = " + std::to_string(Hkv) +
                                        ") must divide q's H = " + std::to_string(H) + " (GQA)");
  c.same_shape({"v_cache", v_cache}, {"k_cache", k_cache});
  c.shape({"out", out}, {N, H * hd}, "N, H * hd");
  c.float_operands({{"out", out}, {"q", q}, {"k_cache", k_cache}, {"v_cache", v_cache}});
  c.disjoint({"q", q}, {"out", out});
  c.disjoint({"k_cache", k_cache}, {"out", out});
  c.disjoint({"v_cache", v_cache}, {"out", out});
}
}  // namespace

void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
               AttentionKeys keys) {
  const Contract c("attention");
  check_attention(c, q, k_cache, v_cache, out);
  // The visible slots, where the host can see them (on CUDA the kernel reads the device copy at replay and
  // skips a slot outside the cache).
  if (const FrameState* st = c.frame_state(ctx, out.device)) {
    const int64_t slots = k_cache.dim(0);
    c.check(st->num_visible >= 1 && st->num_visible <= FrameState::kMaxSlots,
            "num_visible must be 1.." + std::to_string(FrameState::kMaxSlots) + ", got " +
                std::to_string(st->num_visible));
    for (int i = 0; i < st->num_visible; ++i)
      c.check(st->visible_slots[i] >= 0 && st->visible_slots[i] < slots,
              "visible slot " + std::to_string(st->visible_slots[i]) + " outside the cache of " +
                  std::to_string(slots) + " slots");
  }
  NFD_DISPATCH(attention, out, ctx, q, k_cache, v_cache, out, keys);
}

void attention_prepare(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       Tensor& out) {
  check_attention(Contract("attention_prepare"), q, k_cache, v_cache, out);
#ifdef NFD_RT_WITH_CUDA
  if (out.device == Device::cuda) cuda::attention_prepare(ctx, q, k_cache, v_cache, out);
#else
  (void)ctx;
#endif
}

bool attention_read_host_state(const Context& ctx) {
#ifdef NFD_RT_WITH_CUDA
  if (ctx.device == Device::cuda) return cuda::attention_read_host_state();
#else
  (void)ctx;
#endif
  return false;
}

}  // namespace ops
}  // namespace nfd
