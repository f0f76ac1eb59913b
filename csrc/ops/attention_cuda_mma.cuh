// CUDA attention, the tensor-core family ("ours", bf16/fp16; sm_80+ mma.sync): PTX wrappers and the kernel.
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {

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
// 2^x on the special-function unit (flush-to-zero; -inf -> +0): the folded softmax's exponent.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
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

template <int HD, int MT, int BK>
constexpr int mma_smem_bytes() {
  return (tile::mma::block_rows(MT) + 4 * BK) * HD * 2;  // Q + 2 stages of K + 2 stages of V, 16-bit elements
}

// MT: m16 row tiles per warp (block_rows(MT) query rows per CTA); BK: keys per tile (kBK, or kBKWide for
// FlashAttention-2's 64 x 128 shape); kFolded: the softmax form (folded or separate); all in ops/attention_mma.h.
template <typename T, int HD, int MT, int BK, bool kFolded>
__global__ void __launch_bounds__(tile::mma::kThreads) attention_mma_kernel(AttnArgs a) {
  namespace tm = tile::mma;
  constexpr int kBQ = tm::block_rows(MT);
  constexpr int kChunksQ = kBQ * HD / tm::kChunk, kChunksKV = BK * HD / tm::kChunk;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [kBQ][HD], swizzled
  T* Ks = Qs + kBQ * HD;                   // [2][BK][HD]
  T* Vs = Ks + 2 * BK * HD;                // [2][BK][HD]
  __shared__ int slot_of[FrameState::kMaxSlots];
  __shared__ int key_ok[2][BK];  // per stage: key row of the tile is live (in range, valid slot)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int q0 = blockIdx.x * kBQ, h = blockIdx.y, split = blockIdx.z;
  const int N = a.N, H = a.H;
  const int nvis = load_slot_list(a.state, a.slots, slot_of);
  const int64_t L = int64_t(nvis) * N;
  int64_t tb, te;
  tm::kv_split_range((L + BK - 1) / BK, a.splits, split, &tb, &te);
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
  unsigned live_bits = 0;  // bit s: every key row this thread loaded into stage s is live (folded form)
  auto load_kv = [&](int64_t t, int stage) {
    bool live = true;
    T* ks = Ks + stage * BK * HD;
    T* vs = Vs + stage * BK * HD;
    for (int e = tid; e < kChunksKV; e += tm::kThreads) {
      int r, c;
      tm::load_chunk_coords(e, HD, &r, &c);
      const int key = int(t) * BK + r;  // < kMaxSlots * N: 32-bit division
      int64_t off = 0;
      bool ok = false;
      if (key < L) {
        const int slot = slot_of[key / N];
        ok = slot >= 0;
        if (ok) off = tm::kv_offset(slot, key % N, N, a.Hkv, h / (H / a.Hkv), HD) + c * tm::kChunk;
      }
      cp_async16(ks + tm::smem_offset(r, c * tm::kChunk, HD), kg + off, ok);
      cp_async16(vs + tm::smem_offset(r, c * tm::kChunk, HD), vg + off, ok);
      if (c == 0) key_ok[stage][r] = ok;
      live = live && ok;
    }
    live_bits = live ? live_bits | (1u << stage) : live_bits & ~(1u << stage);
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
    // Every key row of tile t was loaded by some thread: the AND of their flags is the tile's liveness.
    bool all_live = true;
    if constexpr (kFolded) all_live = __syncthreads_and(int((live_bits >> stage) & 1u)) != 0;
    else __syncthreads();
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
    const T* ks_tile = Ks + stage * BK * HD;
    const T* vs_tile = Vs + stage * BK * HD;

    float s[MT][BK / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][j][i] = 0.f;
#pragma unroll
    for (int p = 0; p < BK / 16; ++p)
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
    if constexpr (!kFolded) all_live = tm::tile_all_live(t * BK, BK, L, N, slot_of);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {m_run[mt][0], m_run[mt][1]};
#pragma unroll
      for (int j = 0; j < BK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = 8 * j + tm::c_col(lane, i);
          const bool ok = all_live || key_ok[stage][key];
          if constexpr (kFolded) s[mt][j][i] = ok ? s[mt][j][i] : -INFINITY;  // raw scores
          else s[mt][j][i] = ok ? s[mt][j][i] * a.scale_log2 : -INFINITY;
          mx[i >> 1] = fmaxf(mx[i >> 1], s[mt][j][i]);
        }
      float corr[2], offset[2], rowsum[2] = {0.f, 0.f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        if constexpr (kFolded) {
          offset[r] = tm::folded_offset(mx[r], a.scale_log2);
          corr[r] = ex2_approx(fmaf(m_run[mt][r], a.scale_log2, -offset[r]));  // 0 on the first live tile
        } else {
          corr[r] = mx[r] == -INFINITY ? 1.f : exp2f(m_run[mt][r] - mx[r]);  // exp2(-inf) = 0 on the first tile
        }
      }
#pragma unroll
      for (int j = 0; j < BK / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if constexpr (kFolded) {
            s[mt][j][i] = ex2_approx(fmaf(s[mt][j][i], a.scale_log2, -offset[i >> 1]));
          } else {
            const float m = mx[i >> 1];
            s[mt][j][i] = m == -INFINITY ? 0.f : exp2f(s[mt][j][i] - m);
          }
          rowsum[i >> 1] += s[mt][j][i];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l_run[mt][r] = l_run[mt][r] * corr[r] + rowsum[r];  // this thread's part of the row sum (quad-reduced last)
        m_run[mt][r] = mx[r];
      }
#pragma unroll
      for (int j = 0; j < HD / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[mt][j][i] *= corr[i >> 1];
    }

#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
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
        const float m = kFolded ? m_run[mt][r] * a.scale_log2 : m_run[mt][r];  // log2 units
        if ((lane & 3) == 0) a.part.lse[row] = tm::lse_log2(m, l_run[mt][r]);
      }
    }
  }
}

}  // namespace
}  // namespace ops
}  // namespace nfd
