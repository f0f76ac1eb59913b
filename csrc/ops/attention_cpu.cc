// ops::attention on the CPU (contract checked in ops/attention.cc): the current frame's queries over the visible
// cache slots, fp32. The caches are token-major
// ([slots, N, H, hd]): a key of head h is a row of hd floats, consecutive keys H * hd floats apart. Two ways,
// by frame size:
//
// Frames of at most kRegisterKernelMaxTokens tokens (16 on `tiny`): a kernel written for the vector units. One
// GEMM per head and slot was mostly call and packing overhead there (80 sgemm calls per layer on tiny, 59 us;
// this kernel takes 14 us). Per head and block of kQueries queries:
//   scores^T [L, kQueries] = K Q^T: a row per key with the queries across the vector lanes, so a key costs
//     head_dim broadcast-FMAs into one register of sums (Q^T is built once, pre-scaled);
//   a softmax down each column (max, exp, sum), vectorised over the queries as well;
//   O = P V: 4 queries x 16 head dims of sums in registers while the keys stream past.
// It re-reads every key and value once per block of 16 queries, so for large frames (336 tokens on nfd-130m,
// 11k keys per head) OpenBLAS does better: per head the visible keys and values packed into contiguous
// buffers, S = Q K^T, a row softmax, O = P V.
// Either way the softmax sees all L keys of a head at once (no online rescaling needed).
//
// bf16 (attention_bf16 below): large frames take the same steps with oneDNN's bf16 products (fp32 sums): S = Q K^T
// in fp32, the softmax in fp32, exp(S - max) rounded to bf16 for P V, the division by the row sum after it, in
// fp32. Small frames widen the head's keys and values to fp32 and run the register kernel: at 16 tokens the
// products are too small for a GEMM library to beat it.
#include "backends/cpu/blas.h"
#include "backends/cpu/onednn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

constexpr int64_t kRegisterKernelMaxTokens = 64;
constexpr int64_t kQueries = 16;  // queries per block: the lanes of one Vec16 of scores per key
constexpr int64_t kBf16QueryBlock = 64;  // queries per oneDNN product of the bf16 path

// One head, queries q[0 .. nq) (nq <= kQueries, rows of hd floats) against `num_blocks` blocks of `rows` keys
// and values (rows ldk floats apart); writes nq rows of out (stride ldo). `work` holds
// (hd + num_blocks * rows) * kQueries floats.
NFD_CPU_MULTIVERSION
static void attend_block(const float* q, int64_t nq, int64_t hd, const float* const* keys,
                         const float* const* values, int num_blocks, int64_t rows, int64_t ldk, float scale,
                         float* out, int64_t ldo, float* work) {
  const int64_t L = num_blocks * rows;
  float* qt = work;                // [hd, kQueries]; lanes past nq are zero queries, never written out
  float* st = qt + hd * kQueries;  // [L, kQueries] scores, then probabilities
  for (int64_t e = 0; e < hd * kQueries; ++e) qt[e] = 0.f;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t d = 0; d < hd; ++d) qt[d * kQueries + i] = q[i * hd + d] * scale;

  // Scores, 4 keys at a time: 4 independent accumulators hide the FMA latency.
  auto key = [&](int64_t r) { return keys[r / rows] + (r % rows) * ldk; };
  int64_t r = 0;
  for (; r + 4 <= L; r += 4) {
    const float *k0 = key(r), *k1 = key(r + 1), *k2 = key(r + 2), *k3 = key(r + 3);
    Vec16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t d = 0; d < hd; ++d) {
      const Vec16 qd = load16(qt + d * kQueries);
      a0 += k0[d] * qd;
      a1 += k1[d] * qd;
      a2 += k2[d] * qd;
      a3 += k3[d] * qd;
    }
    store16(st + r * kQueries, a0);
    store16(st + (r + 1) * kQueries, a1);
    store16(st + (r + 2) * kQueries, a2);
    store16(st + (r + 3) * kQueries, a3);
  }
  for (; r < L; ++r) {
    const float* k0 = key(r);
    Vec16 a0 = {};
    for (int64_t d = 0; d < hd; ++d) a0 += k0[d] * load16(qt + d * kQueries);
    store16(st + r * kQueries, a0);
  }

  // Softmax down each column: lane i is query i.
  Vec16 m = load16(st);
  for (int64_t j = 1; j < L; ++j) {
    const Vec16 s = load16(st + j * kQueries);
    m = vmax(s, m);
  }
  float mx[kQueries], l[kQueries] = {};
  store16(mx, m);
  for (int64_t j = 0; j < L; ++j)
    for (int64_t i = 0; i < kQueries; ++i) {
      const float e = exp_approx(st[j * kQueries + i] - mx[i]);
      st[j * kQueries + i] = e;
      l[i] += e;
    }

  // O = P V / l, 4 queries x 16 head dims at a time (a tail of head dims one at a time).
  auto value = [&](int64_t j) { return values[j / rows] + (j % rows) * ldk; };
  for (int64_t i0 = 0; i0 < nq; i0 += 4) {
    const int64_t n = std::min<int64_t>(4, nq - i0);
    int64_t c = 0;
    for (; c + 16 <= hd; c += 16) {
      Vec16 o[4] = {};
      for (int64_t j = 0; j < L; ++j) {
        const Vec16 v = load16(value(j) + c);
        const float* p = st + j * kQueries + i0;
        o[0] += p[0] * v;
        o[1] += p[1] * v;
        o[2] += p[2] * v;
        o[3] += p[3] * v;
      }
      for (int64_t i = 0; i < n; ++i) store16(out + (i0 + i) * ldo + c, o[i] * (1.f / l[i0 + i]));
    }
    for (; c < hd; ++c)
      for (int64_t i = 0; i < n; ++i) {
        float acc = 0.f;
        for (int64_t j = 0; j < L; ++j) acc += st[j * kQueries + i0 + i] * value(j)[c];
        out[(i0 + i) * ldo + c] = acc / l[i0 + i];
      }
  }
}

// Softmax of each of `rows` rows of n scores (stride ld), in place. The max and the sum run over 16 lanes (a
// fixed order, so loops the compiler vectorises without reassociating anything), then the lanes in order; the
// exp pass is a plain element loop.
NFD_CPU_MULTIVERSION
static void softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld) {
  constexpr int64_t kLanes = 16;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    const int64_t body = n / kLanes * kLanes;
    float lane[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) lane[l] = row[0];
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lane[l] = std::max(lane[l], row[j + l]);
    float m = row[0];
    for (int64_t l = 0; l < kLanes; ++l) m = std::max(m, lane[l]);
    for (int64_t j = body; j < n; ++j) m = std::max(m, row[j]);
    for (int64_t j = 0; j < n; ++j) row[j] = exp_approx(row[j] - m);
    for (int64_t l = 0; l < kLanes; ++l) lane[l] = 0.f;
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lane[l] += row[j + l];
    float sum = 0.f;
    for (int64_t l = 0; l < kLanes; ++l) sum += lane[l];
    for (int64_t j = body; j < n; ++j) sum += row[j];
    const float inv = 1.f / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  }
}

// One head through OpenBLAS: the head's keys and values of the visible slots gathered into contiguous [L, hd]
// buffers (kp, vp: the cache rows of a head are H * hd floats apart, which made the sgemms ~8% slower on
// nfd-130m shapes than packed rows), then S[N, L] = Q K^T, softmax rows, O = P V as one sgemm each. k, v point
// at head h of cache row 0; `S` holds N * L floats, kp and vp L * hd each.
static void attend_head_blas(const float* q, int64_t N, int64_t hd, const float* k, const float* v, int64_t ldk,
                             const int32_t* slots, int num_slots, float scale, float* out, int64_t ldo, float* S,
                             float* kp, float* vp) {
  const int64_t L = int64_t(num_slots) * N;
  for (int b = 0; b < num_slots; ++b)
    for (int64_t r = 0; r < N; ++r) {
      const int64_t src = (int64_t(slots[b]) * N + r) * ldk, dst = (int64_t(b) * N + r) * hd;
      std::memcpy(kp + dst, k + src, size_t(hd) * sizeof(float));
      std::memcpy(vp + dst, v + src, size_t(hd) * sizeof(float));
    }
  NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(L), int(hd), scale, q, int(hd), kp,
                    int(hd), 0.f, S, int(L));
  softmax_rows(S, N, L, L);
  NFD_CBLAS(sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(hd), int(L), 1.f, S, int(L), vp, int(hd),
                    0.f, out, int(ldo));
}

// keys = same_token: query (n, h) over token n of each visible slot (num_visible keys, a few dozen at most): per
// (token, head) the scores, a softmax over them and the weighted values, in order of the visible list; fp32
// arithmetic, a bf16 output rounded once. One body, compiled per target by the two wrappers below. GQA: query head
// h reads K/V head h / (H / Hkv).
// The work of a token's heads goes slot by slot: the K (then V) rows of all its heads in one slot are one
// contiguous block of the token-major cache, read whole while the next slot's block is prefetched. Taken head by
// head, each (token, head) read one 128-byte row in each of the 32 slots, 300 KB apart, and stalled on nearly
// every one (perf: 70% of the op on its two loads). Head dims go 16 at a time through Vec16 lanes (a score's
// products summed across lanes in a fixed order, each output element summed over the keys in list order), the
// rest one by one: the plain loops' serial dot products had made this op a fifth of an Oasis-500M bf16 frame.
template <typename T>
NFD_CPU_INLINE void attend_same_token_body(const T* q, const T* k_cache, const T* v_cache, int64_t N, int64_t H,
                                           int64_t Hkv, int64_t hd, const int32_t* slots, int num_visible,
                                           float scale, T* out, int64_t t0, int64_t t1) {
  const int64_t body = hd / 16 * 16, group = H / Hkv;
  const int nv = num_visible;
  float* scores = scratch(size_t(H) * FrameState::kMaxSlots, 0);  // [head][key] of one token
  float* acc = scratch(size_t(H * hd), 1);                        // [head][dim] of one token
  const auto prefetch_block = [&](const T* p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + off);
  };
  for (int64_t n = t0 / H; n * H < t1; ++n) {  // t = n * H + h; this chunk's heads of token n: [h0, h1)
    const int64_t h0 = std::max<int64_t>(t0 - n * H, 0), h1 = std::min<int64_t>(t1 - n * H, H);
    const int64_t kh0 = h0 / group, kh1 = (h1 - 1) / group + 1;  // the K/V heads they read
    const int64_t block = (kh1 - kh0) * hd * int64_t(sizeof(T));
    const auto rows = [&](const T* cache, int j) { return cache + ((int64_t(slots[j]) * N + n) * Hkv + kh0) * hd; };
    for (int j = 0; j < nv; ++j) {
      if (j + 1 < nv) prefetch_block(rows(k_cache, j + 1), block);
      const T* kb = rows(k_cache, j);
      for (int64_t h = h0; h < h1; ++h) {
        const T* qi = q + (h * N + n) * hd;
        const T* k = kb + (h / group - kh0) * hd;
        Vec16 a = {};
        for (int64_t d = 0; d < body; d += 16) a += load16(qi + d) * load16(k + d);
        float sc = sum16(a);
        for (int64_t d = body; d < hd; ++d) sc += to_float(qi[d]) * to_float(k[d]);
        scores[h * FrameState::kMaxSlots + j] = sc * scale;
      }
    }
    for (int64_t h = h0; h < h1; ++h) {  // softmax over the keys; the weights normalised
      float* p = scores + h * FrameState::kMaxSlots;
      float m = -INFINITY;
      for (int j = 0; j < nv; ++j) m = std::max(m, p[j]);
      for (int j = 0; j < nv; ++j) p[j] = exp_approx(p[j] - m);
      float sum = 0.f;
      for (int j = 0; j < nv; ++j) sum += p[j];
      const float inv = 1.f / sum;
      for (int j = 0; j < nv; ++j) p[j] *= inv;
      for (int64_t d = 0; d < hd; ++d) acc[h * hd + d] = 0.f;
    }
    prefetch_block(rows(v_cache, 0), block);
    for (int j = 0; j < nv; ++j) {
      if (j + 1 < nv) prefetch_block(rows(v_cache, j + 1), block);
      const T* vb = rows(v_cache, j);
      for (int64_t h = h0; h < h1; ++h) {
        const float w = scores[h * FrameState::kMaxSlots + j];
        const T* v = vb + (h / group - kh0) * hd;
        float* o = acc + h * hd;
        for (int64_t d = 0; d < body; d += 16) store16(o + d, load16(o + d) + w * load16(v + d));
        for (int64_t d = body; d < hd; ++d) o[d] += w * to_float(v[d]);
      }
    }
    for (int64_t h = h0; h < h1; ++h) {
      T* o = out + n * H * hd + h * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = from_float<T>(acc[h * hd + d]);
    }
  }
}

NFD_CPU_MULTIVERSION
static void attend_same_token(const float* q, const float* k, const float* v, int64_t N, int64_t H, int64_t Hkv,
                              int64_t hd, const int32_t* slots, int num_visible, float scale, float* out, int64_t t0,
                              int64_t t1) {
  attend_same_token_body(q, k, v, N, H, Hkv, hd, slots, num_visible, scale, out, t0, t1);
}
NFD_CPU_MULTIVERSION
static void attend_same_token(const bf16_t* q, const bf16_t* k, const bf16_t* v, int64_t N, int64_t H,
                              int64_t Hkv, int64_t hd, const int32_t* slots, int num_visible, float scale, bf16_t* out,
                              int64_t t0, int64_t t1) {
  attend_same_token_body(q, k, v, N, H, Hkv, hd, slots, num_visible, scale, out, t0, t1);
}

// exp(scale * (s - max)) of each of `rows` rows of n fp32 scores (stride ld) into bf16 p (stride ld), and the
// reciprocal of each row's sum (of the unrounded values) into inv. Fixed-order lane sums, as softmax_rows.
NFD_CPU_MULTIVERSION
static void softmax_rows_bf16(const float* s, int64_t rows, int64_t n, int64_t ld, float scale, bf16_t* p,
                              float* inv) {
  constexpr int64_t kLanes = 16;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = s + r * ld;
    bf16_t* prow = p + r * ld;
    const int64_t body = n / kLanes * kLanes;
    // The max in Vec16 registers: as a loop over a lane array GCC left it scalar (a third of this function).
    Vec16 mv = Vec16{} + row[0];
    for (int64_t j = 0; j < body; j += kLanes) mv = vmax(load16(row + j), mv);
    float lane[kLanes];
    store16(lane, mv);
    float m = row[0];
    for (int64_t l = 0; l < kLanes; ++l) m = std::max(m, lane[l]);
    for (int64_t j = body; j < n; ++j) m = std::max(m, row[j]);
    for (int64_t l = 0; l < kLanes; ++l) lane[l] = 0.f;
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) {
        const float e = exp_approx((row[j + l] - m) * scale);
        prow[j + l] = from_float<bf16_t>(e);
        lane[l] += e;
      }
    float sum = 0.f;
    for (int64_t l = 0; l < kLanes; ++l) sum += lane[l];
    for (int64_t j = body; j < n; ++j) {
      const float e = exp_approx((row[j] - m) * scale);
      prow[j] = from_float<bf16_t>(e);
      sum += e;
    }
    inv[r] = 1.f / sum;
  }
}

// bf16 attention (see the top of this file). Heads are the parallel chunks, as in fp32.
static void attention_bf16(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           Tensor& out) {
  const int64_t H = q.dim(0), N = q.dim(1), hd = q.dim(2), Hkv = k_cache.dim(2), group = H / Hkv;
  const FrameState& st = *ctx.state;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int64_t L = int64_t(st.num_visible) * N, ldk = Hkv * hd, ldo = H * hd;
  const bf16_t* qs = q.ptr<bf16_t>();
  bf16_t* o = out.ptr<bf16_t>();
  // The visible keys and values of query head h (K/V head h / group), gathered contiguous ([L, hd] each), as T
  // (bf16 for the GEMMs, fp32 for the register kernel).
  auto gather = [&](int64_t h, auto* kp, auto* vp) {
    using T = std::remove_pointer_t<decltype(kp)>;
    for (int b = 0; b < st.num_visible; ++b)
      for (int64_t r = 0; r < N; ++r) {
        const int64_t src = (int64_t(st.visible_slots[b]) * N + r) * ldk + (h / group) * hd;
        const int64_t dst = (int64_t(b) * N + r) * hd;
        const bf16_t* kr = k_cache.ptr<bf16_t>() + src;
        const bf16_t* vr = v_cache.ptr<bf16_t>() + src;
        if constexpr (std::is_same_v<T, bf16_t>) {
          std::memcpy(kp + dst, kr, size_t(hd) * sizeof(bf16_t));
          std::memcpy(vp + dst, vr, size_t(hd) * sizeof(bf16_t));
        } else {
          for (int64_t d = 0; d < hd; ++d) {
            kp[dst + d] = to_float(kr[d]);
            vp[dst + d] = to_float(vr[d]);
          }
        }
      }
  };
  if (N > kRegisterKernelMaxTokens) {
    // A head's queries in blocks of kBf16QueryBlock: the block's scores (64 x 11k keys on nfd-130m: 2.8 MB) stay
    // in cache between the three steps, where a whole head's (15 MB) went through memory three times.
    const int64_t qb = std::min(N, kBf16QueryBlock);
    ::nfd::cpu::parallel_for(ctx.threads, H, [&](int64_t h0, int64_t h1) {
      float* S = scratch(size_t(qb * L + qb * hd + qb));    // scores [qb, L], O [qb, hd], 1 / row sums [qb]
      float* O = S + qb * L;
      float* inv = O + qb * hd;
      float* buf = scratch(size_t(L * hd + qb * L / 2 + 1), 1);  // kp, vp [L, hd] and P [qb, L] in bf16
      bf16_t* kp = reinterpret_cast<bf16_t*>(buf);
      bf16_t* vp = kp + L * hd;
      bf16_t* P = vp + L * hd;
      for (int64_t h = h0; h < h1; ++h) {
        gather(h, kp, vp);
        for (int64_t r0 = 0; r0 < N; r0 += qb) {
          const int64_t rows = std::min(qb, N - r0);
          ::nfd::cpu::Matmul qk;  // S = Q K^T
          qk.M = rows, qk.N = L, qk.K = hd, qk.lda = hd, qk.ldb = hd, qk.ldc = L, qk.b_nk = true;
          qk.c = DType::f32;
          ::nfd::cpu::matmul(qk, qs + (h * N + r0) * hd, kp, S);
          softmax_rows_bf16(S, rows, L, L, scale, P, inv);
          ::nfd::cpu::Matmul pv;  // O = P V
          pv.M = rows, pv.N = hd, pv.K = L, pv.lda = L, pv.ldb = hd, pv.ldc = hd, pv.c = DType::f32;
          ::nfd::cpu::matmul(pv, P, vp, O);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t d = 0; d < hd; ++d)
              o[(r0 + i) * ldo + h * hd + d] = from_float<bf16_t>(O[i * hd + d] * inv[i]);
        }
      }
    }, ::nfd::cpu::grain_for(2 * N * L * hd));
    return;
  }
  const int64_t query_blocks = (N + kQueries - 1) / kQueries;
  ::nfd::cpu::parallel_for(ctx.threads, H * query_blocks, [&](int64_t t0, int64_t t1) {
    float* work = scratch(size_t((hd + L) * kQueries));
    float* kv = scratch(size_t(2 * L * hd + 2 * kQueries * hd), 1);  // keys, values [L, hd]; q and out [16, hd]
    float* kp = kv;
    float* vp = kv + L * hd;
    float* qf = vp + L * hd;
    float* of = qf + kQueries * hd;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / query_blocks, r0 = (t % query_blocks) * kQueries, nq = std::min(kQueries, N - r0);
      gather(h, kp, vp);
      for (int64_t e = 0; e < nq * hd; ++e) qf[e] = to_float(qs[(h * N + r0) * hd + e]);
      const float* keys[1] = {kp};
      const float* values[1] = {vp};
      attend_block(qf, nq, hd, keys, values, 1, L, hd, scale, of, hd, work);
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t d = 0; d < hd; ++d) o[(r0 + i) * ldo + h * hd + d] = from_float<bf16_t>(of[i * hd + d]);
    }
  }, ::nfd::cpu::grain_for(4 * kQueries * L * hd));
}

void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
               AttentionKeys keys) {
  const bool bf16 = cpu_bf16("attention", out);
  if (bf16 && keys != AttentionKeys::same_token) return attention_bf16(ctx, q, k_cache, v_cache, out);
  const int64_t H = q.dim(0), N = q.dim(1), hd = q.dim(2), Hkv = k_cache.dim(2);
  const int64_t group = H / Hkv;  // GQA: query head h reads K/V head h / group
  const FrameState& st = *ctx.state;
  if (keys == AttentionKeys::same_token) {
    const float scale = float(1.0 / std::sqrt(double(hd)));
    ::nfd::cpu::parallel_for(ctx.threads, N * H, [&](int64_t t0, int64_t t1) {
      if (bf16)
        attend_same_token(q.ptr<bf16_t>(), k_cache.ptr<bf16_t>(), v_cache.ptr<bf16_t>(), N, H, Hkv, hd,
                          st.visible_slots, st.num_visible, scale, out.ptr<bf16_t>(), t0, t1);
      else
        attend_same_token(q.ptr<float>(), k_cache.ptr<float>(), v_cache.ptr<float>(), N, H, Hkv, hd,
                          st.visible_slots, st.num_visible, scale, out.ptr<float>(), t0, t1);
    }, ::nfd::cpu::grain_for(4 * int64_t(st.num_visible) * hd));
    return;
  }

  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int64_t L = int64_t(st.num_visible) * N;  // keys of one head
  const int64_t ldk = Hkv * hd;                   // floats between consecutive keys of a head
  if (N > kRegisterKernelMaxTokens) {
    ::nfd::cpu::set_blas_threads(1);
    ::nfd::cpu::parallel_for(ctx.threads, H, [&](int64_t h0, int64_t h1) {  // heads are independent
      float* S = scratch(size_t(N * L));
      float* kv = scratch(size_t(2 * L * hd), 1);
      for (int64_t h = h0; h < h1; ++h)
        attend_head_blas(q.ptr<float>() + h * N * hd, N, hd, k_cache.ptr<float>() + (h / group) * hd,
                         v_cache.ptr<float>() + (h / group) * hd, ldk, st.visible_slots, st.num_visible, scale,
                         out.ptr<float>() + h * hd, H * hd, S, kv, kv + L * hd);
    }, ::nfd::cpu::grain_for(2 * N * L * hd));
    return;
  }
  auto slot_pointers = [&](int64_t h, const float** keys, const float** values) {
    for (int b = 0; b < st.num_visible; ++b) {  // key / value row 0 of head h in visible slot b
      const int64_t offset = int64_t(st.visible_slots[b]) * N * ldk + (h / group) * hd;
      keys[b] = k_cache.ptr<float>() + offset;
      values[b] = v_cache.ptr<float>() + offset;
    }
  };
  const int64_t query_blocks = (N + kQueries - 1) / kQueries;
  ::nfd::cpu::parallel_for(ctx.threads, H * query_blocks, [&](int64_t t0, int64_t t1) {
    const float* keys[FrameState::kMaxSlots];
    const float* values[FrameState::kMaxSlots];
    float* work = scratch(size_t((hd + L) * kQueries));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / query_blocks, r0 = (t % query_blocks) * kQueries;
      slot_pointers(h, keys, values);
      attend_block(q.ptr<float>() + (h * N + r0) * hd, std::min(kQueries, N - r0), hd, keys, values,
                   st.num_visible, N, ldk, scale, out.ptr<float>() + r0 * H * hd + h * hd, H * hd, work);
    }
  }, ::nfd::cpu::grain_for(4 * kQueries * L * hd));
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
