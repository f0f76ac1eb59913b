// Index maps and work partitioning of the tensor-core attention kernel (ops/attention_cuda.cu), host and
// device: the kernel computes every shared-memory address, ldmatrix source row and fragment coordinate through
// these functions, and tests/cpp/test_attention_emulation.cc runs the kernel's data flow on the CPU (the
// PTX-documented semantics of cp.async, ldmatrix and mma.m16n8k16 emulated lane by lane) through the same
// functions, against a double-precision attention.
//
// Kernel shape (one CTA = kWarps warps = block_rows(MT) query rows of one head, one range of key tiles; each
// warp holds MT m16 row tiles):
//   S[16 x BK] = Q[16 x hd] K^T per row tile (mma.m16n8k16, A = Q from ldmatrix, B = K from ldmatrix),
//   online softmax on the S accumulators in fp32 (log2 units), P re-packed in registers as the A operand of
//   O[16 x hd] += P[16 x BK] V[BK x hd] (B = V from ldmatrix.trans), BK = kBK or kBKWide keys a tile.
//   A warp loads each K and V fragment once for its MT row tiles: with MT = 2 one ldmatrix.x4 feeds 4 MMAs
//   instead of 2, so shared-memory reads no longer bound the MMA rate (4 cycles of ldmatrix.x4 against ~1.5
//   per MMA), and each CTA reads a key tile for twice the queries (half the L2 traffic).
// Shared tiles are [rows][hd] 16-bit elements in 16-byte chunks, the chunk index XOR-swizzled by the row so
// the 8 row addresses of one ldmatrix phase hit 8 different 4-bank groups (no bank conflicts).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace tile {
namespace mma {

constexpr int kWarps = 4;  // warps per CTA
constexpr int kBK = 64;    // keys per tile (8 MMA n-tiles of 8 keys)
// The wide key tile: FlashAttention-2's 64 x 128 shape (one row tile a warp, 16 n-tiles of keys), at head_dim 64
// only: half the tile loop's barriers and online-softmax rescales of the 64-key tile; 72 KiB of shared memory and
// 188 registers a thread (sm_90): 2 CTAs an SM. The kernel takes the key tile as a template parameter.
constexpr int kBKWide = 128;
constexpr int kThreads = 32 * kWarps;
constexpr int kChunk = 8;  // 16-bit elements per 16-byte chunk (one cp.async, one ldmatrix row)

// Query rows per CTA with MT m16 row tiles per warp; row tile mt of warp w starts at row 16 (w MT + mt).
NFD_HOST_DEVICE constexpr int block_rows(int mt_per_warp) { return 16 * mt_per_warp * kWarps; }
NFD_HOST_DEVICE inline int row_tile_start(int warp, int mt, int mt_per_warp) { return 16 * (warp * mt_per_warp + mt); }

// --- shared memory --------------------------------------------------------------------------------------
// Physical chunk of logical chunk `chunk` in row `row` of a tile with `chunks_per_row` chunks (hd / 8).
// 128-byte and longer rows: XOR with row % 8 (8 consecutive rows cover the 8 chunk columns of a 128-byte
// bank window). 64-byte rows (hd 32, two rows per window): XOR with (row / 2) % 4.
NFD_HOST_DEVICE inline int swizzle_chunk(int row, int chunk, int chunks_per_row) {
  return chunks_per_row >= 8 ? chunk ^ (row & 7) : chunk ^ ((row >> 1) & 3);
}
// Element offset of (row, col) in a swizzled [rows][hd] tile.
NFD_HOST_DEVICE inline int smem_offset(int row, int col, int hd) {
  return row * hd + swizzle_chunk(row, col / kChunk, hd / kChunk) * kChunk + col % kChunk;
}
// The tile loaders: flat chunk index e of a [rows][hd] tile -> (row, logical chunk); thread t takes
// e = t, t + kThreads, ... so a warp reads whole consecutive rows (coalesced 16-byte loads).
NFD_HOST_DEVICE inline void load_chunk_coords(int e, int hd, int* row, int* chunk) {
  *row = e / (hd / kChunk);
  *chunk = e % (hd / kChunk);
}

// --- ldmatrix sources (x4: lanes 8m .. 8m+7 give the 8 row addresses of matrix m) -------------------------
// Q as the A operand of k-step ks (head dims 16ks .. 16ks+15) of the warp's 16 rows: matrices (rows 0-7,
// dims 0-7), (rows 8-15, dims 0-7), (rows 0-7, dims 8-15), (rows 8-15, dims 8-15) = registers a0..a3.
NFD_HOST_DEVICE inline void ldsm_q_src(int lane, int ks, int* row, int* col) {
  const int m = lane >> 3;
  *row = (lane & 7) + 8 * (m & 1);
  *col = 16 * ks + 8 * (m >> 1);
}
// K as the B operand (B[dim][key]) of key n-tiles 2p, 2p+1 (keys 16p .. 16p+15) and k-step ks: matrices
// (keys 0-7, dims 0-7) = b0 of n-tile 2p, (keys 0-7, dims 8-15) = b1 of 2p, then the same for keys 8-15 (2p+1).
NFD_HOST_DEVICE inline void ldsm_k_src(int lane, int p, int ks, int* key, int* col) {
  const int m = lane >> 3;
  *key = 16 * p + (lane & 7) + 8 * (m >> 1);
  *col = 16 * ks + 8 * (m & 1);
}
// V as the B operand (B[key][dim], ldmatrix.trans) of k-step kk (keys 16kk .. 16kk+15) and dim n-tiles 2q,
// 2q+1: matrices (keys 0-7, dims 0-7) = b0 of 2q, (keys 8-15, dims 0-7) = b1 of 2q, then dims 8-15 (2q+1).
NFD_HOST_DEVICE inline void ldsm_v_src(int lane, int kk, int q, int* key, int* col) {
  const int m = lane >> 3;
  *key = 16 * kk + (lane & 7) + 8 * (m & 1);
  *col = 16 * q + 8 * (m >> 1);
}

// --- accumulator fragment (m16n8, fp32 c0..c3) -------------------------------------------------------------
NFD_HOST_DEVICE inline int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
NFD_HOST_DEVICE inline int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }
// P as the A operand of k-step kk is made of the S accumulators of key n-tiles 2kk and 2kk+1:
// a0 = S[2kk].(c0, c1), a1 = S[2kk].(c2, c3), a2 = S[2kk+1].(c0, c1), a3 = S[2kk+1].(c2, c3).
NFD_HOST_DEVICE inline int p_ntile(int kk, int a_reg) { return 2 * kk + (a_reg >> 1); }
NFD_HOST_DEVICE inline int p_creg(int a_reg, int half) { return 2 * (a_reg & 1) + half; }

// --- keys -------------------------------------------------------------------------------------------------
// Element offset of head h of key `row` (0 .. N) of cache slot `slot` in a token-major cache [slots, N, H, hd].
NFD_HOST_DEVICE inline int64_t kv_offset(int slot, int row, int N, int H, int h, int hd) {
  return ((int64_t(slot) * N + row) * H + h) * hd;
}

// True when every key of the tile starting at key k0 is live: inside the L visible keys and in a slot of the
// cache (slot_of[i] >= 0 for each visible frame i it spans). Such a tile, nearly every tile of a frame, needs
// no per-key mask (CTA-uniform: the same for every thread).
NFD_HOST_DEVICE inline bool tile_all_live(int64_t k0, int tile_keys, int64_t L, int N, const int* slot_of) {
  if (k0 + tile_keys > L) return false;
  for (int64_t f = k0 / N, last = (k0 + tile_keys - 1) / N; f <= last; ++f)
    if (slot_of[f] < 0) return false;
  return true;
}

// --- online softmax: two forms of the same arithmetic (NFD_RT_ATTENTION_SOFTMAX) ---------------------------
// separate: each score scaled first (s' = s * scale_log2), the row max m' over scaled scores, p = exp2(s' - m');
//           the form measured on the H200 (2026-11-26).
// folded (FlashAttention-2's): the row max m over raw scores, p = exp2(fma(s, scale_log2, -offset)) with
//           offset = m * scale_log2: one FFMA and one ex2.approx a score instead of a multiply, a subtract and
//           exp2f's range handling. A row whose max is still -inf (every key so far masked) takes offset 0, so a
//           masked score (-inf) gives p = 0 without a test per score; the rescale of the running sums is
//           exp2(fma(m_old, scale_log2, -offset)) (0 on the first live tile) and the split's log-sum-exp is
//           lse_log2(m * scale_log2, l).
// A tile's liveness: separate reads it from the slot list (tile_all_live, two 64-bit divisions a thread a
// tile); folded ANDs the flags the loading threads computed anyway (__syncthreads_and at the tile's barrier).
NFD_HOST_DEVICE inline float folded_offset(float m_raw, float scale_log2) {
  return m_raw == -INFINITY ? 0.f : m_raw * scale_log2;
}

// --- split over the key range ---------------------------------------------------------------------------
// Key tiles [begin, end) of split s of `splits` over `tiles` tiles: as equal as integer division allows, so
// every split has work once tiles >= splits (a partly filled cache still spreads over every CTA).
NFD_HOST_DEVICE inline void kv_split_range(int64_t tiles, int splits, int s, int64_t* begin, int64_t* end) {
  *begin = tiles * s / splits;
  *end = tiles * (s + 1) / splits;
}

// Splits for a grid of `base` CTAs (query tiles x heads) on `sms` multiprocessors holding `per_sm` CTAs each:
// the smallest count in [1, max_splits] whose CTAs fill at least 90% of the machine's waves
// (base * splits / (waves * sms * per_sm)); if none does, the one filling them best. Fewer splits mean fewer
// partials to write and merge. Never more splits than `max_tiles` key tiles.
inline int choose_splits(int base, int sms, int per_sm, int64_t max_tiles, int max_splits) {
  const int64_t slots = int64_t(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
  int64_t limit = max_tiles < max_splits ? max_tiles : max_splits;
  if (limit < 1) limit = 1;
  int best = 1;
  double best_eff = -1.0;
  for (int s = 1; s <= limit; ++s) {
    const int64_t ctas = int64_t(base > 0 ? base : 1) * s;
    const int64_t waves = (ctas + slots - 1) / slots;
    const double eff = double(ctas) / double(waves * slots);
    if (eff >= 0.9) return s;
    if (eff > best_eff + 1e-9) {
      best_eff = eff;
      best = s;
    }
  }
  return best;
}

// --- log-sum-exp merge of split partials -----------------------------------------------------------------
// A split writes its rows normalised (o = acc / l) with lse = m + log2(l) (log2 units, -inf when the split
// saw no key). The merged row is sum_s w_s o_s / sum_s w_s with w_s = exp2(lse_s - max_s lse_s).
NFD_HOST_DEVICE inline float lse_log2(float m, float l) { return l > 0.f ? m + log2f(l) : -INFINITY; }
NFD_HOST_DEVICE inline float lse_weight(float lse, float lse_max) {
  return lse == -INFINITY ? 0.f : exp2f(lse - lse_max);
}

}  // namespace mma
}  // namespace tile
}  // namespace nfd
