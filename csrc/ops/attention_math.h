// Tile-level math shared by the CUDA kernels and the CPU tests (tests/cpp/test_tile_math.cc compiles this
// header without nvcc): online-softmax partial results and their merge, chunked mean/variance and their merge,
// the RoPE angle, bf16 rounding.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace nfd {
namespace tile {

// Running softmax statistics of one query row over a subset of keys: m = max score (already scaled, in log2
// units), l = sum exp2(s - m). The matching output accumulator is acc = sum exp2(s - m) v (unnormalised).
struct SoftmaxState {
  float m;
  float l;
};

NFD_HOST_DEVICE inline SoftmaxState softmax_empty() { return SoftmaxState{-INFINITY, 0.f}; }

// Folds one new score s (log2 units) into the state; returns the factor the old accumulator must be scaled by,
// and *p the weight of the new value. exp2(-inf) = 0 handles the first key.
NFD_HOST_DEVICE inline float softmax_push(SoftmaxState& st, float s, float* p) {
  float m_new = s > st.m ? s : st.m;
  float corr = exp2f(st.m - m_new);
  *p = exp2f(s - m_new);
  st.l = st.l * corr + *p;
  st.m = m_new;
  return corr;
}

// Merge weights for two partial results over disjoint key sets: out = (wa * acc_a + wb * acc_b) / l where
// l = wa * l_a + wb * l_b. An empty partial (m = -inf, l = 0) gets weight 0. Returns l (0 if both empty).
NFD_HOST_DEVICE inline float softmax_merge_weights(SoftmaxState a, SoftmaxState b, float* wa, float* wb) {
  float m = a.m > b.m ? a.m : b.m;
  if (m == -INFINITY) {
    *wa = 0.f;
    *wb = 0.f;
    return 0.f;
  }
  *wa = a.l > 0.f ? exp2f(a.m - m) : 0.f;
  *wb = b.l > 0.f ? exp2f(b.m - m) : 0.f;
  return *wa * a.l + *wb * b.l;
}

// Mean and sum of squared deviations (M2) of `n` values, for statistics computed in chunks by separate CUDA
// blocks (GroupNorm) and merged afterwards (Chan et al.'s pairwise update): as exact as one two-pass over all
// values as long as each chunk's own statistics are two-pass.
struct MomentState {
  float n;
  float mean;
  float m2;
};
NFD_HOST_DEVICE inline MomentState moments_merge(MomentState a, MomentState b) {
  const float n = a.n + b.n;
  if (n == 0.f) return MomentState{0.f, 0.f, 0.f};
  const float delta = b.mean - a.mean, fb = b.n / n;
  return MomentState{n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}
// Chunk c of `chunks` over n elements: [n * c / chunks, n * (c + 1) / chunks).
NFD_HOST_DEVICE inline void chunk_range(int64_t n, int chunks, int c, int64_t* begin, int64_t* end) {
  *begin = n * c / chunks;
  *end = n * (c + 1) / chunks;
}

// RoPE: angle of pair `pair` (0 .. head_dim/2) of a token at (frame, row, col); parts (time, height, width)
// of sizes dims[0..2]; within a part of size d, local pair j rotates by pos * theta^(-2j/d). In double, as the
// reference (python rope_angles) does; the caller casts cos/sin to float.
NFD_HOST_DEVICE inline double rope_angle(int pair, const int dims[3], double theta, double frame, double row,
                                         double col) {
  int j = pair;
  double pos = frame;
  int d = dims[0];
  if (j >= dims[0] / 2) {
    j -= dims[0] / 2;
    pos = row;
    d = dims[1];
    if (j >= dims[1] / 2) {
      j -= dims[1] / 2;
      pos = col;
      d = dims[2];
    }
  }
  return pos * pow(theta, -double(2 * j) / double(d));
}

// float -> bf16 bits, round to nearest even (NaN kept quiet), as __float2bfloat16_rn does.
NFD_HOST_DEVICE inline uint16_t bf16_bits_rn(float f) {
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
NFD_HOST_DEVICE inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
NFD_HOST_DEVICE inline float round_bf16(float f) { return bf16_bits_to_float(bf16_bits_rn(f)); }

}  // namespace tile
}  // namespace nfd
