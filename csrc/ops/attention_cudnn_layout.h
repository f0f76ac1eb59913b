// How ops::attention's tensors look to cuDNN's fused SDPA (ops/attention_cuda_cudnn.cc), and the key range split
// into S batches so that one frame's few query tiles still fill the GPU: host-testable (the emulation test in
// tests/cpp/test_attention_emulation.cc reads our tensors through exactly these views and merges the batches as
// the merge kernel does, through lse_log2).
//
// cuDNN sees 4-D tensors (batch, heads, sequence, head_dim) with arbitrary strides. Ours: q [H, N, hd]; the
// token-major caches [slots, N, Hkv, hd], whose first num_visible * N rows are the visible keys when the visible
// slots are the cache's prefix 0 .. num_visible-1 (in any order: attention does not depend on the key order);
// out [N, H * hd].
//
// The split: batch b reads the keys [b * stride, b * stride + seq_len_kv[b]) of the cache, through a view of
// `batch_keys` rows starting at b * stride. Batches 0 .. S-2 own `stride` keys each, the last one the rest
// (<= batch_keys); every view ends inside the cache, so no batch describes memory past it. seq_len_kv[b] (cuDNN's
// padding mask) is computed on the device from num_visible, so one captured graph serves every fill level. Each
// batch sees the same queries (S copies of q), writes its rows normalised and their log-sum-exp (natural log,
// cuDNN's Stats), and the merge of split partials weighs the batches by their log-sum-exp; a batch without keys is
// left out.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace tile {
namespace sdpa {

struct KeySplit {
  int splits = 1;
  int64_t batch_keys = 0;  // rows of every batch's K/V view (cuDNN's s_kv)
  int64_t stride = 0;      // keys between two batches' first rows; batches 0 .. S-2 own this many
};

// The split of `total` keys into `splits` batches (1 <= splits <= total). With S > 1: stride =
// floor((total - ceil(total / S)) / (S - 1)) and batch_keys = total - (S - 1) * stride, so the last view ends
// exactly at the cache's end and holds ceil(total / S) .. ceil(total / S) + S - 2 keys.
inline KeySplit key_split(int64_t total, int splits) {
  KeySplit k;
  k.splits = splits < 1 ? 1 : (splits > total ? int(total) : splits);
  if (k.splits == 1) {
    k.batch_keys = total;
    k.stride = total;
    return k;
  }
  const int64_t per = (total + k.splits - 1) / k.splits;
  k.stride = (total - per) / (k.splits - 1);
  k.batch_keys = total - (k.splits - 1) * k.stride;
  return k;
}

// The keys batch b attends over when the first `visible` keys of the cache are live.
NFD_HOST_DEVICE inline int32_t seq_len_kv(const KeySplit& k, int b, int64_t visible) {
  const int64_t first = int64_t(b) * k.stride;
  const int64_t own = b == k.splits - 1 ? k.batch_keys : k.stride;
  const int64_t n = visible - first;
  return int32_t(n < 0 ? 0 : (n > own ? own : n));
}

// A 4-D view (batch, heads, sequence, head_dim) in elements of the tensor's dtype.
struct View {
  int64_t dim[4];
  int64_t stride[4];
  NFD_HOST_DEVICE int64_t offset(int64_t b, int64_t h, int64_t s, int64_t d) const {
    return b * stride[0] + h * stride[1] + s * stride[2] + d * stride[3];
  }
};

// Q: S copies of q [H, N, hd] one after another (one copy when S == 1: q itself).
inline View q_view(int N, int H, int hd, int splits) {
  const int64_t per = int64_t(H) * N * hd;
  return View{{splits, H, N, hd}, {per, int64_t(N) * hd, hd, 1}};
}

// K and V: the token-major cache [slots, N, Hkv, hd] read from its first row, batch b from key b * stride.
inline View kv_view(const KeySplit& k, int Hkv, int hd) {
  const int64_t row = int64_t(Hkv) * hd;
  return View{{k.splits, Hkv, k.batch_keys, hd}, {k.stride * row, hd, row, 1}};
}

// O: with one batch, straight into out [N, H * hd]; with several, partials [S, H, N, hd] (the inputs' dtype).
inline View o_view(int N, int H, int hd, int splits) {
  if (splits == 1) return View{{1, H, N, hd}, {int64_t(N) * H * hd, hd, int64_t(H) * hd, 1}};
  return View{{splits, H, N, hd}, {int64_t(H) * N * hd, int64_t(N) * hd, hd, 1}};
}

// Stats (several batches only): fp32 [S, H, N, 1], the log-sum-exp of each row's scaled scores, natural log.
inline View stats_view(int N, int H, int splits) {
  return View{{splits, H, N, 1}, {int64_t(H) * N, N, 1, 1}};
}

// A batch's row log-sum-exp as the merge of split partials reads it (log2 units, tile::mma::lse_weight): cuDNN's
// Stats (natural log) times log2(e); -inf for a batch without keys (its O and Stats were not computed over
// anything and are not read).
NFD_HOST_DEVICE inline float lse_log2(int32_t keys, float stats) {
  return keys > 0 ? stats * 1.4426950408889634f : -INFINITY;
}

}  // namespace sdpa
}  // namespace tile
}  // namespace nfd
