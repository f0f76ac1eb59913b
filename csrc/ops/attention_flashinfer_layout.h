// How ops::attention's tensors look to FlashInfer's Hopper attention (wgmma + TMA, warp-specialised, persistent:
// ops/attention_cuda_flashinfer_sm90.cu), and the key range split so that one frame's few query tiles fill the
// GPU: host-testable (tests/cpp/test_attention_emulation.cc runs a problem through exactly this plan and these
// index maps, and merges the splits as the merge kernel does).
//
// FlashInfer's sm90 kernels split nothing themselves: a single-prefill call over nfd-310m's full cache is 2 query
// tiles x 16 heads = 32 CTAs on 132 SMs. Its *batch ragged* form takes a work list instead (one item: a query
// tile of one head of one request, a request being a range of query rows and a range of key rows), run by one
// persistent CTA per SM. So each split of the key range is a request of its own: request s = the frame's N
// queries against keys [s * chunk, s * chunk + kv_len_s) of the token-major caches. The requests' query rows
// must be distinct rows of one ragged Q (FlashInfer indexes Q and O by the same row), hence S copies of q laid
// out [H, S * N, hd] (request s at rows s * N: q_stride_n = hd, q_stride_h = S * N * hd). Outputs: partials
// [S * N, H, hd] and their log-sum-exp [S * N, H] (log2 units of the scaled scores, FlashInfer's convention and
// ours), merged by the split merge of ops/attention_cuda_merge.cuh through partial_row() below. An item whose
// key range is empty writes zeros and lse = -inf (FlashInfer's store_zero), which the merge leaves out.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace tile {
namespace fi90 {

// FlashInfer's tile at head_dim 64 (hopper/prefill_sm90.cuh, getCTATileSize<64, 64, false>): 192 query rows x
// 128 keys. Chunks are whole key tiles, so only the last split's last tile is partial (TMA zero-fills it: the
// kernel is given exactly kv_len rows of K/V).
constexpr int kCtaQ = 192;
constexpr int kCtaKV = 128;

struct RaggedSplit {
  int splits = 1;      // requests (key ranges) actually used: <= what was asked, none empty
  int64_t chunk = 0;   // keys per request (a multiple of kCtaKV); the last one holds the rest
  int q_tiles = 1;     // query tiles of kCtaQ rows per (request, head)
  int items = 0;       // work items: splits * heads * q_tiles
};

// kv_len live keys (none: no requests, no items), n > 0 queries, h heads, asked_splits >= 1.
NFD_HOST_DEVICE inline RaggedSplit ragged_split(int64_t kv_len, int n, int h, int asked_splits) {
  RaggedSplit r;
  const int64_t tiles = kv_len > 0 ? (kv_len + kCtaKV - 1) / kCtaKV : 0;
  if (tiles == 0) {
    r.splits = 0;
    r.items = 0;
    return r;
  }
  const int64_t s = asked_splits < 1 ? 1 : (asked_splits > tiles ? tiles : asked_splits);
  r.chunk = ((tiles + s - 1) / s) * kCtaKV;
  r.splits = int((kv_len + r.chunk - 1) / r.chunk);  // rounding the chunk up may leave fewer requests
  r.q_tiles = (n + kCtaQ - 1) / kCtaQ;
  r.items = r.splits * h * r.q_tiles;
  return r;
}

// Work item w (0 <= w < items): FlashInfer's per-item fields. Split-major, then head, then query tile, so the
// items of one CTA mostly share a key range (K/V stay in L2).
struct WorkItem {
  int split, head, q_tile;
  int32_t qo_indptr, kv_indptr, qo_len, kv_len;
};
NFD_HOST_DEVICE inline WorkItem work_item(const RaggedSplit& r, int64_t kv_len, int n, int h, int w) {
  WorkItem it;
  it.q_tile = w % r.q_tiles;
  it.head = (w / r.q_tiles) % h;
  it.split = w / (r.q_tiles * h);
  it.qo_indptr = int32_t(it.split) * n;
  it.qo_len = n;
  const int64_t first = int64_t(it.split) * r.chunk, left = kv_len - first;
  it.kv_indptr = int32_t(first);
  it.kv_len = int32_t(left < 0 ? 0 : (left > r.chunk ? r.chunk : left));
  return it;
}

// The persistent scheduler's work_indptr: CTA c runs items [work_begin(c), work_begin(c + 1)), contiguous and
// balanced to within one item (every item costs about the same: one query tile against one chunk).
NFD_HOST_DEVICE inline int work_begin(int items, int ctas, int c) { return int(int64_t(items) * c / ctas); }

// The row of split s's partial for query n of head h in the partials [S * N, H, hd] and lse [S * N, H]: the
// ragged output row s * N + n, head-minor (o_stride_n = H * hd, o_stride_h = hd).
NFD_HOST_DEVICE inline int64_t partial_row(int s, int h, int n, int N, int H) {
  return (int64_t(s) * N + n) * H + h;
}

// The strides FlashInfer is given (elements; its layouts are (rows, head_dim, heads) with strides (stride_n, 1,
// stride_h), rows being ragged rows): q copies [H, S * N, hd], the token-major caches [keys, Hkv, hd], partials
// [S * N, H, hd]. With one range, q itself ([H, N, hd]) and out itself ([N, H * hd]) have exactly these strides.
struct Strides {
  int64_t q_n, q_h, kv_n, kv_h, o_n, o_h;
};
inline Strides ragged_strides(int N, int H, int Hkv, int hd, int splits) {
  return Strides{hd, int64_t(splits) * N * hd, int64_t(Hkv) * hd, hd, int64_t(H) * hd, hd};
}

}  // namespace fi90
}  // namespace tile
}  // namespace nfd
