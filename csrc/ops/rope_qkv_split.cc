// ops::rope_qkv_split: qkv[N, (H + 2 Hkv) hd] -> q_out[H, N, hd] and the cache slot state->write_slot of the
// token-major caches [slots, N, Hkv, hd], with 3D RoPE on q and k, or the rotation of a per-token table, and
// Waypoint-1.5's variant (QK-norm, de-interleaved output, time pairs, value residual) (math in ops/ops.h). The
// contract is checked here; the backends only compute.
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache,
                    Tensor& v_cache, const Tensor* table, const Tensor* v0) {
  const Contract c("rope_qkv_split");
  c.defined({{"qkv", qkv}, {"q_out", q_out}, {"k_cache", k_cache}, {"v_cache", v_cache}});
  c.shape({"q_out", q_out}, {-1, -1, -1}, "H, N, hd");
  const int64_t H = q_out.dim(0), N = q_out.dim(1), hd = q_out.dim(2);
  c.shape({"k_cache", k_cache}, {-1, N, -1, hd}, "slots, N, Hkv, hd");
  const int64_t Hkv = k_cache.dim(2);
  c.check(Hkv >= 1 && H % Hkv == 0, "k_cache's heads (Hkv = " + std::to_string(Hkv) + ") must divide q_out's H = " +
                                        std::to_string(H) + " (GQA)");
  c.shape({"qkv", qkv}, {N, (H + 2 * Hkv) * hd}, "N, (H + 2 * Hkv) * hd");
  c.same_shape({"v_cache", v_cache}, {"k_cache", k_cache});
  const Tensor none;
  const Tensor& tab = table ? *table : none;
  const Tensor& vr = v0 ? *v0 : none;
  c.float_operands({{"q_out", q_out}, {"qkv", qkv}, {"k_cache", k_cache}, {"v_cache", v_cache}, {"table", tab},
                    {"v0", vr}});
  c.disjoint({"qkv", qkv}, {"q_out", q_out});
  c.disjoint({"qkv", qkv}, {"k_cache", k_cache});
  c.disjoint({"qkv", qkv}, {"v_cache", v_cache});
  c.disjoint({"q_out", q_out}, {"k_cache", k_cache});
  c.disjoint({"q_out", q_out}, {"v_cache", v_cache});
  c.disjoint({"k_cache", k_cache}, {"v_cache", v_cache});
  c.check(rope.qk_norm_eps >= 0.f, "qk_norm_eps must be >= 0 (0: no QK-norm), got " + std::to_string(rope.qk_norm_eps));
  if (table) {  // the rotation comes from the table (and the time pairs): rope_dims and grid_cols are not read
    c.check(tab.defined(), "table is undefined (no data)");
    c.shape({"table", tab}, {N, -1, 2}, "N, P, 2");
    // The CUDA kernels visit pairs only (no odd last element), and no model has an odd head_dim.
    c.check(hd % 2 == 0, "head_dim must be even, got " + std::to_string(hd));
    c.check(tab.dim(1) >= 1 && 2 * tab.dim(1) <= hd,
            "table must rotate 1 to head_dim / 2 = " + std::to_string(hd / 2) + " pairs, got P = " +
                std::to_string(tab.dim(1)));
    c.check(rope.time_pairs >= 0 && (rope.time_pairs == 0 || tab.dim(1) + rope.time_pairs == hd / 2),
            "time_pairs must be 0 or head_dim / 2 - P = " + std::to_string(hd / 2 - tab.dim(1)) + ", got " +
                std::to_string(rope.time_pairs));
    if (rope.time_pairs > 0) c.check(rope.theta > 0, "theta must be > 0 for the time pairs");
    c.disjoint({"table", tab}, {"q_out", q_out});
    c.disjoint({"table", tab}, {"k_cache", k_cache});
    c.disjoint({"table", tab}, {"v_cache", v_cache});
  } else {
    c.check(rope.time_pairs == 0, "time_pairs needs a table (the spatial pairs' rotation)");
    const int dt = rope.rope_dims[0], dh = rope.rope_dims[1], dw = rope.rope_dims[2];
    c.check(dt >= 0 && dh >= 0 && dw >= 0 && dt % 2 == 0 && dh % 2 == 0 && dw % 2 == 0 && dt + dh + dw == hd,
            "rope_dims must be even and sum to head_dim " + std::to_string(hd) + ", got [" + std::to_string(dt) +
                ", " + std::to_string(dh) + ", " + std::to_string(dw) + "]");
    c.check(rope.grid_cols > 0 && N % rope.grid_cols == 0, "grid_cols must divide the token count N = " +
                                                               std::to_string(N) + ", got " +
                                                               std::to_string(rope.grid_cols));
  }
  if (v0) {  // the value residual's v0: layer 0's qkv, whose v columns are read
    c.check(vr.defined(), "v0 is undefined (no data)");
    c.same_shape({"v0", vr}, {"qkv", qkv});
    c.disjoint({"v0", vr}, {"q_out", q_out});
    c.disjoint({"v0", vr}, {"k_cache", k_cache});
    c.disjoint({"v0", vr}, {"v_cache", v_cache});
  }
  // The write slot, where the host can see it (on CUDA the kernel reads the device copy at replay and writes
  // nothing for a slot outside the cache).
  if (const FrameState* st = c.frame_state(ctx, q_out.device))
    c.check(st->write_slot >= 0 && st->write_slot < k_cache.dim(0),
            "write_slot " + std::to_string(st->write_slot) + " outside the cache of " +
                std::to_string(k_cache.dim(0)) + " slots");
  NFD_DISPATCH(rope_qkv_split, q_out, ctx, qkv, rope, q_out, k_cache, v_cache, table, v0);
}

}  // namespace ops
}  // namespace nfd
