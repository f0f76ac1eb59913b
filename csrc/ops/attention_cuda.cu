// out[N, H*hd] = softmax(q k^T / sqrt(hd)) v per head over the keys of cache slots
// state->visible_slots[0 .. num_visible); q [H, N, hd], caches token-major [slots, N, H, hd] (a key of head h
// is a row of hd elements, consecutive keys H*hd apart). The slot list is read on the device, so one captured
// graph serves every fill level of the cache. Three implementations behind the op, chosen per call
// (NFD_RT_ATTENTION = ours | flashinfer | simt, default ours; nfd::kernels_used() records which one ran):
//
//  * ours, bf16/fp16, head_dim 32/64/128 ("mma"): a flash-attention tile kernel on tensor cores (sm_80+
//    mma.sync.m16n8k16, fp32 accumulation), index maps in ops/attention_mma.h:
//      - grid (query tiles of 128, heads, splits); 4 warps, each 2 row tiles of 16 queries (head_dim 128: 64
//        and 1; at head_dim 64 both, the faster per shape as ops::attention_prepare measured it at session
//        open, or NFD_RT_ATTENTION_ROWS), so each K/V fragment read from shared memory
//        feeds 4 MMAs; key tiles of 64 through shared memory (cp.async, double-buffered, 16-byte chunks
//        XOR-swizzled), Q held in registers as A fragments;
//      - S = Q K^T (K via ldmatrix), online softmax in fp32 on the accumulators (log2 units, scores scaled by
//        log2(e)/sqrt(hd)), P re-packed in registers as the A operand of O += P V (V via ldmatrix.trans);
//      - split over the key range: the live key tiles (num_visible * N / 64, read on the device) are shared
//        out evenly over the `splits` CTAs of a (query tile, head) (tile::mma::kv_split_range), so a
//        batch-1 frame fills every SM at any fill level; the host sizes the grid for the full cache and
//        never reads num_visible. Each split writes its rows normalised plus their log-sum-exp; a second
//        kernel merges them (tile::mma::lse_weight). CTAs whose range is empty write lse = -inf and exit.
//  * flashinfer (CMake -DNFD_RT_FLASHINFER=ON): FlashInfer's single-prefill kernel on the same tensors
//    (ops/attention_flashinfer_cuda.cu). Its grid comes from kv_len on the host (ctx.host_state): it runs
//    when the visible slots are the prefix 0 .. num_visible-1 of the cache (always the case for a session
//    without rollback), else ours runs.
//  * simt: flash-decoding on CUDA cores (the first version; fp32 always runs here): grid (32-query tiles,
//    heads, splits), 4 threads per query, keys/values through shared memory 32 at a time.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/attention_math.h"
#include "ops/attention_mma.h"
#include "ops/cuda_common.cuh"
#include "ops/kernel_report.h"

namespace nfd {
namespace ops {

#ifdef NFD_RT_WITH_FLASHINFER
namespace cuda_detail {
// ops/attention_flashinfer_cuda.cu: q [H, N, hd], k/v the first kv_len rows of the token-major caches,
// out [N, H*hd]; bf16/fp16, head_dim 64. False when it does not take this problem (dtype, head_dim).
bool flashinfer_attention(DType dtype, const void* q, const void* k, const void* v, void* out, int N, int H,
                          int hd, int kv_len, cudaStream_t s);
}  // namespace cuda_detail
#endif

namespace {
using tile::mma::kBK;

// Split partials (either kernel): o [splits, H, N, hd] fp32 normalised rows, lse [splits, H, N] (log2 units).
struct Partials {
  float* o = nullptr;
  float* lse = nullptr;
};

struct AttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;  // [N, H*hd] (splits == 1)
  Partials part;
  const FrameState* state;
  int N, H, slots, splits;
  float scale_log2;  // log2(e) / sqrt(hd)
};

// Visible slots into shared memory (-1 for a slot outside the cache: its keys are masked); returns the count.
__device__ __forceinline__ int load_slot_list(const FrameState* state, int slots, int* slot_of) {
  int nvis = state->num_visible;
  nvis = nvis < 0 ? 0 : (nvis > FrameState::kMaxSlots ? FrameState::kMaxSlots : nvis);
  for (int i = threadIdx.x; i < nvis; i += blockDim.x) {
    const int s = state->visible_slots[i];
    slot_of[i] = s >= 0 && s < slots ? s : -1;
  }
  return nvis;
}

// ------------------------------------------------------------------------------------------------------------
// Tensor-core kernel (sm_80+). PTX wrappers: cp.async 16 bytes (zero-filled when !valid), ldmatrix x4, mma.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* smem) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const void* smem) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
// d[0..3] += a[0..3] (16x16, row) * b[0..1] (16x8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, const uint32_t* b);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Two floats -> one register of two 16-bit values, the first in the low half (the lower column of a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <typename T>
__device__ __forceinline__ void store2(T* p, float a, float b);
template <>
__device__ __forceinline__ void store2<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
template <>
__device__ __forceinline__ void store2<__half>(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}

template <int HD, int MT>
constexpr int mma_smem_bytes() {
  return (tile::mma::block_rows(MT) + 4 * kBK) * HD * 2;  // Q + 2 stages of K + 2 stages of V, 16-bit elements
}

// MT: m16 row tiles per warp (block_rows(MT) query rows per CTA), see ops/attention_mma.h.
template <typename T, int HD, int MT>
__global__ void __launch_bounds__(tile::mma::kThreads) attention_mma_kernel(AttnArgs a) {
  namespace tm = tile::mma;
  constexpr int kBQ = tm::block_rows(MT);
  constexpr int kChunksQ = kBQ * HD / tm::kChunk, kChunksKV = kBK * HD / tm::kChunk;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [kBQ][HD], swizzled
  T* Ks = Qs + kBQ * HD;                   // [2][kBK][HD]
  T* Vs = Ks + 2 * kBK * HD;               // [2][kBK][HD]
  __shared__ int slot_of[FrameState::kMaxSlots];
  __shared__ int key_ok[2][kBK];  // per stage: key row of the tile is live (in range, valid slot)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int q0 = blockIdx.x * kBQ, h = blockIdx.y, split = blockIdx.z;
  const int N = a.N, H = a.H;
  const int nvis = load_slot_list(a.state, a.slots, slot_of);
  const int64_t L = int64_t(nvis) * N;
  int64_t tb, te;
  tm::kv_split_range((L + kBK - 1) / kBK, a.splits, split, &tb, &te);
  if (tb >= te) {  // no keys for this split (CTA-uniform): an empty partial, or zeros when unsplit
    for (int r = tid; r < kBQ; r += tm::kThreads) {
      const int n = q0 + r;
      if (n >= N) continue;
      if (a.splits > 1) {
        a.part.lse[(int64_t(split) * H + h) * N + n] = -INFINITY;
      } else {
        T* op = static_cast<T*>(a.out) + int64_t(n) * H * HD + h * HD;
        for (int d = 0; d < HD; ++d) op[d] = cudaops::from_f<T>(0.f);
      }
    }
    return;
  }
  __syncthreads();  // slot_of ready

  const T* qg = static_cast<const T*>(a.q) + int64_t(h) * N * HD;
  const T* kg = static_cast<const T*>(a.k);
  const T* vg = static_cast<const T*>(a.v);
  for (int e = tid; e < kChunksQ; e += tm::kThreads) {
    int r, c;
    tm::load_chunk_coords(e, HD, &r, &c);
    const bool ok = q0 + r < N;
    cp_async16(Qs + tm::smem_offset(r, c * tm::kChunk, HD), qg + (ok ? int64_t(q0 + r) * HD + c * tm::kChunk : 0), ok);
  }
  auto load_kv = [&](int64_t t, int stage) {
    T* ks = Ks + stage * kBK * HD;
    T* vs = Vs + stage * kBK * HD;
    for (int e = tid; e < kChunksKV; e += tm::kThreads) {
      int r, c;
      tm::load_chunk_coords(e, HD, &r, &c);
      const int key = int(t) * kBK + r;  // < kMaxSlots * N: 32-bit division
      int64_t off = 0;
      bool ok = false;
      if (key < L) {
        const int slot = slot_of[key / N];
        ok = slot >= 0;
        if (ok) off = tm::kv_offset(slot, key % N, N, H, h, HD) + c * tm::kChunk;
      }
      cp_async16(ks + tm::smem_offset(r, c * tm::kChunk, HD), kg + off, ok);
      cp_async16(vs + tm::smem_offset(r, c * tm::kChunk, HD), vg + off, ok);
      if (c == 0) key_ok[stage][r] = ok;
    }
  };
  load_kv(tb, 0);
  cp_async_commit();

  uint32_t qf[MT][HD / 16][4];  // Q as A fragments, per row tile and k-step of 16 head dims
  float o[MT][HD / 8][4];       // O accumulators, per row tile and n-tile of 8 head dims
  float m_run[MT][2], l_run[MT][2];  // rows g and g+8 of each row tile
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[mt][j][i] = 0.f;
  }

  for (int64_t t = tb; t < te; ++t) {
    const int stage = int(t - tb) & 1;
    if (t + 1 < te) load_kv(t + 1, stage ^ 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = everything up to tile t
    cp_async_wait<1>();
    __syncthreads();
    if (t == tb) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
          int r, c;
          tm::ldsm_q_src(lane, ks, &r, &c);
          ldsm_x4(qf[mt][ks], Qs + tm::smem_offset(tm::row_tile_start(warp, mt, MT) + r, c, HD));
        }
    }
    const T* ks_tile = Ks + stage * kBK * HD;
    const T* vs_tile = Vs + stage * kBK * HD;

    float s[MT][kBK / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < kBK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][j][i] = 0.f;
#pragma unroll
    for (int p = 0; p < kBK / 16; ++p)
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) {
        uint32_t kb[4];  // loaded once, used by every row tile
        int key, c;
        tm::ldsm_k_src(lane, p, ks, &key, &c);
        ldsm_x4(kb, ks_tile + tm::smem_offset(key, c, HD));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(s[mt][2 * p], qf[mt][ks], kb);
          mma16816<T>(s[mt][2 * p + 1], qf[mt][ks], kb + 2);
        }
      }

    // Online softmax on the accumulators: this thread holds rows g (c0, c1) and g+8 (c2, c3) of each row tile;
    // the 4 threads of a quad hold the row's other columns. A tile whose keys are all live skips the per-key
    // mask (its shared-memory reads compete with ldmatrix).
    const bool all_live = tm::tile_all_live(t * kBK, kBK, L, N, slot_of);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {m_run[mt][0], m_run[mt][1]};
#pragma unroll
      for (int j = 0; j < kBK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = 8 * j + tm::c_col(lane, i);
          s[mt][j][i] = all_live || key_ok[stage][key] ? s[mt][j][i] * a.scale_log2 : -INFINITY;
          mx[i >> 1] = fmaxf(mx[i >> 1], s[mt][j][i]);
        }
      float corr[2], rowsum[2] = {0.f, 0.f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        corr[r] = mx[r] == -INFINITY ? 1.f : exp2f(m_run[mt][r] - mx[r]);  // exp2(-inf) = 0 on the first tile
      }
#pragma unroll
      for (int j = 0; j < kBK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float m = mx[i >> 1];
          s[mt][j][i] = m == -INFINITY ? 0.f : exp2f(s[mt][j][i] - m);
          rowsum[i >> 1] += s[mt][j][i];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l_run[mt][r] = l_run[mt][r] * corr[r] + rowsum[r];  // per-thread partial of the row sum; quad-reduced at the end
        m_run[mt][r] = mx[r];
      }
#pragma unroll
      for (int j = 0; j < HD / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[mt][j][i] *= corr[i >> 1];
    }

#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ar = 0; ar < 4; ++ar) {
          const int j = tm::p_ntile(kk, ar);
          pa[mt][ar] = pack2<T>(s[mt][j][tm::p_creg(ar, 0)], s[mt][j][tm::p_creg(ar, 1)]);
        }
#pragma unroll
      for (int qd = 0; qd < HD / 16; ++qd) {
        uint32_t vb[4];  // loaded once, used by every row tile
        int key, c;
        tm::ldsm_v_src(lane, kk, qd, &key, &c);
        ldsm_x4_trans(vb, vs_tile + tm::smem_offset(key, c, HD));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][2 * qd], pa[mt], vb);
          mma16816<T>(o[mt][2 * qd + 1], pa[mt], vb + 2);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration's loads overwrite it
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l_run[mt][r] += __shfl_xor_sync(0xffffffffu, l_run[mt][r], 1);
      l_run[mt][r] += __shfl_xor_sync(0xffffffffu, l_run[mt][r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int n = q0 + tm::row_tile_start(warp, mt, MT) + tm::c_row(lane, 2 * r);
      if (n >= N) continue;
      const float inv = l_run[mt][r] > 0.f ? 1.f / l_run[mt][r] : 0.f;
      if (a.splits == 1) {
        T* op = static_cast<T*>(a.out) + int64_t(n) * H * HD + h * HD;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j)
          store2<T>(op + 8 * j + tm::c_col(lane, 2 * r), o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      } else {
        const int64_t row = (int64_t(split) * H + h) * N + n;
        float* op = a.part.o + row * HD;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j)
          *reinterpret_cast<float2*>(op + 8 * j + tm::c_col(lane, 2 * r)) =
              make_float2(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
        if ((lane & 3) == 0) a.part.lse[row] = tm::lse_log2(m_run[mt][r], l_run[mt][r]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// CUDA-core kernel (fp32, and any dtype on request).
constexpr int kSBQ = 32, kTPQ = 4, kSBK = 32, kSThreads = kSBQ * kTPQ;

template <typename T, int HD>
__global__ void __launch_bounds__(kSThreads) attention_simt_kernel(AttnArgs a) {
  constexpr int DPT = HD / kTPQ;  // dims per thread
  __shared__ float Ks[kSBK][HD];
  __shared__ float Vs[kSBK][HD];
  __shared__ int slot_of[FrameState::kMaxSlots];
  __shared__ bool live[kSBK];  // key of the tile in range with a valid slot

  const int h = blockIdx.y, split = blockIdx.z;
  const int qi = threadIdx.x / kTPQ, sub = threadIdx.x % kTPQ;
  const int n = blockIdx.x * kSBQ + qi;
  const int N = a.N, H = a.H;
  const int nvis = load_slot_list(a.state, a.slots, slot_of);
  const int64_t L = int64_t(nvis) * N;
  int64_t chunk = (L + a.splits - 1) / a.splits;
  chunk = (chunk + kSBK - 1) / kSBK * kSBK;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = k_begin + chunk < L ? k_begin + chunk : L;

  const T* qp = static_cast<const T*>(a.q);
  float qr[DPT], acc[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    // Interleaved dims (sub + 4i): the 4 threads of a query read 4 consecutive shared words (no bank conflict).
    qr[i] = n < N ? cudaops::to_f(qp[(int64_t(h) * N + n) * HD + sub + kTPQ * i]) * a.scale_log2 : 0.f;
    acc[i] = 0.f;
  }
  tile::SoftmaxState st = tile::softmax_empty();
  const T* kp = static_cast<const T*>(a.k);
  const T* vp = static_cast<const T*>(a.v);
  __syncthreads();  // slot_of ready

  for (int64_t t0 = k_begin; t0 < k_end; t0 += kSBK) {
    for (int e = threadIdx.x; e < kSBK * HD; e += kSThreads) {
      const int kk = e / HD, d = e % HD;
      const int64_t key = t0 + kk;
      float kv = 0.f, vv = 0.f;
      bool ok = false;
      if (key < k_end) {
        const int slot = slot_of[key / N];
        ok = slot >= 0;
        if (ok) {
          const int64_t off = tile::mma::kv_offset(slot, int(key % N), N, H, h, HD) + d;
          kv = cudaops::to_f(kp[off]);
          vv = cudaops::to_f(vp[off]);
        }
      }
      Ks[kk][d] = kv;
      Vs[kk][d] = vv;
      if (d == 0) live[kk] = ok;
    }
    __syncthreads();
    float s[kSBK];
    float m_tile = -INFINITY;
#pragma unroll
    for (int kk = 0; kk < kSBK; ++kk) {
      float p = 0.f;
#pragma unroll
      for (int i = 0; i < DPT; ++i) p += qr[i] * Ks[kk][sub + kTPQ * i];
      p += __shfl_xor_sync(0xffffffffu, p, 1);
      p += __shfl_xor_sync(0xffffffffu, p, 2);
      s[kk] = live[kk] ? p : -INFINITY;
      m_tile = fmaxf(m_tile, s[kk]);
    }
    const float m_new = fmaxf(st.m, m_tile);
    if (m_new != -INFINITY) {  // a tile of only masked keys changes nothing
      const float corr = exp2f(st.m - m_new);
      st.l *= corr;
#pragma unroll
      for (int i = 0; i < DPT; ++i) acc[i] *= corr;
#pragma unroll
      for (int kk = 0; kk < kSBK; ++kk) {
        const float p = exp2f(s[kk] - m_new);
        st.l += p;
#pragma unroll
        for (int i = 0; i < DPT; ++i) acc[i] += p * Vs[kk][sub + kTPQ * i];
      }
      st.m = m_new;
    }
    __syncthreads();
  }

  if (n >= N) return;
  const float inv = st.l > 0.f ? 1.f / st.l : 0.f;
  if (a.splits == 1) {
    T* op = static_cast<T*>(a.out);
#pragma unroll
    for (int i = 0; i < DPT; ++i)
      op[int64_t(n) * H * HD + h * HD + sub + kTPQ * i] = cudaops::from_f<T>(acc[i] * inv);
  } else {
    const int64_t row = (int64_t(split) * H + h) * N + n;
#pragma unroll
    for (int i = 0; i < DPT; ++i) a.part.o[row * HD + sub + kTPQ * i] = acc[i] * inv;
    if (sub == 0) a.part.lse[row] = tile::mma::lse_log2(st.m, st.l);
  }
}

// ------------------------------------------------------------------------------------------------------------
// One warp per (head, token): merges the splits' normalised rows by their log-sum-exp. A split with lse = -inf
// (no keys) has weight 0 and its row is not read (it was never written).
template <typename T>
__global__ void attention_combine_kernel(Partials part, T* out, int N, int H, int hd, int splits) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N * H) return;
  const int h = warp / N, n = warp % N;
  float lse_max = -INFINITY;
  for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, part.lse[(int64_t(s) * H + h) * N + n]);
  float wsum = 0.f;
  for (int s = 0; s < splits; ++s) wsum += tile::mma::lse_weight(part.lse[(int64_t(s) * H + h) * N + n], lse_max);
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  for (int d = lane; d < hd; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = (int64_t(s) * H + h) * N + n;
      const float w = tile::mma::lse_weight(part.lse[row], lse_max);
      if (w > 0.f) acc += w * part.o[row * hd + d];
    }
    out[int64_t(n) * H * hd + h * hd + d] = cudaops::from_f<T>(acc * inv);
  }
}

// ------------------------------------------------------------------------------------------------------------
enum class Impl { ours, flashinfer, simt };

Impl requested_impl() {
  const char* e = std::getenv("NFD_RT_ATTENTION");
  if (!e || !*e || std::strcmp(e, "ours") == 0) return Impl::ours;
  if (std::strcmp(e, "flashinfer") == 0) return Impl::flashinfer;
  if (std::strcmp(e, "simt") == 0) return Impl::simt;
  fail(ErrorKind::invalid_argument,
       std::string("NFD_RT_ATTENTION must be 'ours', 'flashinfer' or 'simt', got '") + e + "'");
}

int sm_count() {
  int dev = 0, sms = 0;
  cudaops::check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaops::check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return sms;
}

// Splits of the key range: the machine's waves filled (tile::mma::choose_splits), never more than the key
// tiles of a full cache. NFD_RT_ATTENTION_SPLITS overrides (tuning on a GPU).
int pick_splits(int base, int per_sm, int64_t max_tiles) {
  if (const char* e = std::getenv("NFD_RT_ATTENTION_SPLITS")) {
    const int v = std::atoi(e);
    NFD_CHECK(v >= 1 && v <= 64, invalid_argument,  // 64: the partials' bound in ops/scratch_bound.cc
              std::string("NFD_RT_ATTENTION_SPLITS must be 1..64, got '") + e + "'");
    return int(std::max<int64_t>(1, std::min<int64_t>(v, max_tiles)));
  }
  return tile::mma::choose_splits(base, sm_count(), per_sm, max_tiles, 64);
}

template <typename T, int HD, int MT>
int mma_ctas_per_sm() {
  // Dynamic shared memory beyond 48 KB must be allowed per kernel (once per process; not a stream operation,
  // so it is also fine while a graph is being captured).
  static std::once_flag once;
  static int per_sm = 1;
  std::call_once(once, [] {
    auto kernel = attention_mma_kernel<T, HD, MT>;
    constexpr int smem = mma_smem_bytes<HD, MT>();
    cudaops::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "cudaFuncSetAttribute (attention smem)");
    cudaops::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, tile::mma::kThreads, smem),
                   "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    per_sm = std::max(per_sm, 1);
  });
  return per_sm;
}

// Query rows per CTA of the tensor-core kernel: 128 (2 row tiles per warp) for head_dim 32 and 64, 64 for 128
// (its accumulators would not fit twice in registers). At head_dim 64 both exist: NFD_RT_ATTENTION_ROWS=64|128
// forces one; otherwise the one ops::attention_prepare measured faster for the shape (at session open), 128
// for shapes never prepared.
using RowsKey = std::tuple<int, int, int, int>;  // dtype, N, H, slots
std::mutex g_rows_mu;
bool g_rows128_failed = false;  // the 128-row tile failed in some attention_prepare: unprepared shapes take 64
std::map<RowsKey, int>& rows_choices() {
  static std::map<RowsKey, int> m;
  return m;
}

const char* rows_override() {
  const char* e = std::getenv("NFD_RT_ATTENTION_ROWS");
  if (!e || !*e) return nullptr;
  NFD_CHECK(std::strcmp(e, "64") == 0 || std::strcmp(e, "128") == 0, invalid_argument,
            std::string("NFD_RT_ATTENTION_ROWS must be 64 or 128, got '") + e + "'");
  return e;
}

int mma_rows(int hd, const RowsKey& key) {
  if (hd != 64) return hd == 128 ? 64 : 128;
  if (const char* e = rows_override()) return std::atoi(e);
  std::lock_guard<std::mutex> lock(g_rows_mu);
  auto it = rows_choices().find(key);
  return it != rows_choices().end() ? it->second : g_rows128_failed ? 64 : 128;
}

template <typename T>
void combine(const AttnArgs& a, int hd, cudaStream_t s) {
  const int64_t threads = int64_t(a.N) * a.H * 32;
  attention_combine_kernel<T><<<cudaops::grid_1d(threads, 256), 256, 0, s>>>(a.part, static_cast<T*>(a.out), a.N,
                                                                            a.H, hd, a.splits);
  cudaops::check_launch("attention (combine)");
}

// Runs the kernel with splits partials in stream-ordered scratch (graph-capturable), then the merge.
template <typename T, typename Launch>
void with_partials(AttnArgs a, int hd, cudaStream_t s, Launch launch) {
  cudaops::Scratch o(a.splits > 1 ? size_t(a.splits) * a.H * a.N * hd * sizeof(float) : 0, s);
  cudaops::Scratch lse(a.splits > 1 ? size_t(a.splits) * a.H * a.N * sizeof(float) : 0, s);
  a.part.o = o.get<float>();
  a.part.lse = lse.get<float>();
  launch(a);
  if (a.splits > 1) combine<T>(a, hd, s);
}

template <typename T, int HD, int MT>
std::string run_mma(AttnArgs a, cudaStream_t s) {
  constexpr int kBQ = tile::mma::block_rows(MT);
  const int base = ((a.N + kBQ - 1) / kBQ) * a.H;
  const int64_t max_tiles = (int64_t(std::min(a.slots, FrameState::kMaxSlots)) * a.N + kBK - 1) / kBK;
  a.splits = pick_splits(base, mma_ctas_per_sm<T, HD, MT>(), max_tiles);
  with_partials<T>(a, HD, s, [&](const AttnArgs& args) {
    dim3 grid((args.N + kBQ - 1) / kBQ, args.H, args.splits);
    attention_mma_kernel<T, HD, MT><<<grid, tile::mma::kThreads, mma_smem_bytes<HD, MT>(), s>>>(args);
    cudaops::check_launch("attention (tensor cores)");
  });
  return "ours: mma.sync m16n8k16, " + std::to_string(kBQ) + "x" + std::to_string(kBK) +
         " tiles, splits=" + std::to_string(a.splits);
}

template <typename T, int HD>
std::string run_simt(AttnArgs a, cudaStream_t s) {
  const int base = ((a.N + kSBQ - 1) / kSBQ) * a.H;
  const int64_t max_tiles = (int64_t(std::min(a.slots, FrameState::kMaxSlots)) * a.N + kSBK - 1) / kSBK;
  a.splits = pick_splits(base, 2, max_tiles);
  with_partials<T>(a, HD, s, [&](const AttnArgs& args) {
    dim3 grid((args.N + kSBQ - 1) / kSBQ, args.H, args.splits);
    attention_simt_kernel<T, HD><<<grid, kSThreads, 0, s>>>(args);
    cudaops::check_launch("attention (CUDA cores)");
  });
  return "simt: CUDA cores, splits=" + std::to_string(a.splits);
}

template <typename T>
std::string run_typed(const AttnArgs& a, int hd, bool mma, cudaStream_t s) {
  if constexpr (!std::is_same<T, float>::value) {  // tensor cores: 16-bit inputs only
    if (mma) {
      switch (hd) {
        case 32: return run_mma<T, 32, 2>(a, s);
        case 64: {
          const RowsKey key{int(std::is_same<T, __half>::value ? DType::f16 : DType::bf16), a.N, a.H, a.slots};
          return mma_rows(64, key) == 64 ? run_mma<T, 64, 1>(a, s) : run_mma<T, 64, 2>(a, s);
        }
        case 128: return run_mma<T, 128, 1>(a, s);
        default: break;
      }
    }
  }
  switch (hd) {
    case 32: return run_simt<T, 32>(a, s);
    case 64: return run_simt<T, 64>(a, s);
    case 128: return run_simt<T, 128>(a, s);
    default:  // the backend's own limit (the contract, ops/attention.cc, takes any head_dim)
      fail(ErrorKind::unsupported,
           "ops::attention: head_dim " + std::to_string(hd) + ": the CUDA kernels take 32, 64 or 128");
  }
}

#ifdef NFD_RT_WITH_FLASHINFER
// The visible slots are the cache's prefix 0 .. num_visible-1 (in any order): keys = the first rows.
bool visible_is_prefix(const FrameState& st, int slots) {
  if (st.num_visible < 1 || st.num_visible > slots || st.num_visible > FrameState::kMaxSlots) return false;
  std::vector<char> seen(size_t(st.num_visible), 0);
  for (int i = 0; i < st.num_visible; ++i) {
    const int s = st.visible_slots[i];
    if (s < 0 || s >= st.num_visible || seen[size_t(s)]) return false;
    seen[size_t(s)] = 1;
  }
  return true;
}
#endif
}  // namespace

bool cuda::attention_sized_on_host() { return requested_impl() == Impl::flashinfer; }

namespace {
AttnArgs attn_args(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
                   const FrameState* state) {
  return AttnArgs{q.data, k_cache.data, v_cache.data, out.data, Partials{}, state, int(q.dim(1)), int(q.dim(0)),
                  int(k_cache.dim(0)), 1, float(1.4426950408889634 / std::sqrt(double(q.dim(2))))};
}

// What the tensor-core kernel needs besides a head_dim it was built for: 16-bit tensors, 16-byte aligned rows
// for cp.async (true for arena tensors: hd is a multiple of 8) and 4-byte aligned output pairs.
bool mma_takes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out) {
  return (q.dtype == DType::bf16 || q.dtype == DType::f16) && cudaops::aligned16(q.data) &&
         cudaops::aligned16(k_cache.data) && cudaops::aligned16(v_cache.data) &&
         (reinterpret_cast<uintptr_t>(out.data) & 3u) == 0;
}

// Times both query tiles of ours at head_dim 64 with every slot visible and records the faster (attention_prepare).
template <typename T>
void prepare_rows(AttnArgs a, const RowsKey& key, const std::string& name, cudaStream_t s) {
  FrameState full{};
  full.num_visible = std::min(a.slots, FrameState::kMaxSlots);
  for (int i = 0; i < full.num_visible; ++i) full.visible_slots[i] = i;
  cudaops::Scratch state(sizeof(FrameState), s);
  cudaops::check(cudaMemcpyAsync(state.get<void>(), &full, sizeof(FrameState), cudaMemcpyHostToDevice, s),
                 "attention_prepare: FrameState upload");
  a.state = state.get<const FrameState>();
  // 64 rows is the tile measured on a GPU before 128 existed: its failure is the session's. A 128-row tile that
  // fails to launch (or to run) is noted and left out, so a session opens on the measured tile instead of failing.
  const float t64 = cudaops::time_ms(s, [&] { run_mma<T, 64, 1>(a, s); });
  float t128 = -1.f;
  std::string failed;
  try {
    t128 = cudaops::time_ms(s, [&] { run_mma<T, 64, 2>(a, s); });
    cudaops::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (attention_prepare)");
  } catch (const Error& e) {
    failed = e.what();
    cudaStreamSynchronize(s);  // what was queued before the failure
    cudaGetLastError();
  }
  const int rows = failed.empty() && t128 <= t64 ? 128 : 64;
  {
    std::lock_guard<std::mutex> lock(g_rows_mu);
    rows_choices()[key] = rows;
    if (!failed.empty()) g_rows128_failed = true;
  }
  char buf[160];
  if (failed.empty())
    std::snprintf(buf, sizeof buf, "measured at open over %d slots: 64 rows %.4f ms, 128 rows %.4f ms -> %d",
                  full.num_visible, t64, t128, rows);
  else
    std::snprintf(buf, sizeof buf, "measured at open over %d slots: 64 rows %.4f ms, 128 rows failed -> 64 (",
                  full.num_visible, t64);
  note_kernel(name + " (choice)", failed.empty() ? std::string(buf) : buf + failed.substr(0, 200) + ")");
}
}  // namespace

void cuda::attention_prepare(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             Tensor& out) {
  using namespace cudaops;
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2)), slots = int(k_cache.dim(0));
  if (hd != 64 || int64_t(N) * H == 0 || !mma_takes(q, k_cache, v_cache, out) || requested_impl() != Impl::ours ||
      rows_override())
    return;
  cudaStream_t s = stream_of(ctx);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
  if (cap != cudaStreamCaptureStatusNone) return;  // cannot time inside a capture: 128 rows stay the default
  const RowsKey key{int(q.dtype), N, H, slots};
  {
    std::lock_guard<std::mutex> lock(g_rows_mu);
    if (rows_choices().count(key)) return;  // measured before (another session or layer)
  }
  const AttnArgs a = attn_args(q, k_cache, v_cache, out, nullptr);  // prepare_rows sets its own FrameState
  const std::string name = std::string("attention ") + dtype_name(q.dtype) + " hd64 N=" + std::to_string(N) +
                           " H=" + std::to_string(H) + " slots=" + std::to_string(slots);
  if (q.dtype == DType::bf16) prepare_rows<__nv_bfloat16>(a, key, name, s);
  else prepare_rows<__half>(a, key, name, s);
}

void cuda::attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out) {
  using namespace cudaops;
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2)), slots = int(k_cache.dim(0));
  if (int64_t(N) * H * hd == 0) return;
  cudaStream_t s = stream_of(ctx);
  const Impl impl = requested_impl();
  const std::string key = std::string("attention ") + dtype_name(q.dtype) + " hd" + std::to_string(hd);

  if (impl == Impl::flashinfer) {
#ifdef NFD_RT_WITH_FLASHINFER
    NFD_CHECK(ctx.host_state != nullptr, invalid_argument,
              "ops::attention: NFD_RT_ATTENTION=flashinfer needs ctx.host_state (the host copy of the FrameState)");
    const bool half = q.dtype == DType::bf16 || q.dtype == DType::f16;
    if (half && visible_is_prefix(*ctx.host_state, slots)) {
      const int kv_len = ctx.host_state->num_visible * N;
      if (cuda_detail::flashinfer_attention(q.dtype, q.data, k_cache.data, v_cache.data, out.data, N, H, hd, kv_len, s)) {
        note_kernel(key, "flashinfer: SinglePrefillWithKVCache (FA2, split-KV by FlashInfer)");
        return;
      }
    }
#else
    fail(ErrorKind::unsupported,
         "NFD_RT_ATTENTION=flashinfer, but nfd_rt was built without FlashInfer (CMake -DNFD_RT_FLASHINFER=ON)");
#endif
  }

  const AttnArgs a = attn_args(q, k_cache, v_cache, out, ctx.state);
  const bool mma = impl != Impl::simt && mma_takes(q, k_cache, v_cache, out);
  std::string ran;
  switch (q.dtype) {
    case DType::bf16: ran = run_typed<__nv_bfloat16>(a, hd, mma, s); break;
    case DType::f16: ran = run_typed<__half>(a, hd, mma, s); break;
    default: ran = run_typed<float>(a, hd, false, s); break;
  }
  if (impl == Impl::flashinfer) ran += " (FlashInfer requested; it does not take this problem)";
  note_kernel(key, ran);
}

}  // namespace ops
}  // namespace nfd
