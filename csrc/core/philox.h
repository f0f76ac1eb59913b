// Philox4x32-10 counter-based noise + Box-Muller, bit-identical to python/nfd_rt/rng.py.
// Header-only and __host__ __device__ under nvcc so the CPU and CUDA backends share one definition.
//
// Element e of the noise for (seed, frame, step) uses counter (e / 4, frame, step, 0), key (seed lo, seed hi),
// lane e % 4; lanes (0,1) and (2,3) are Box-Muller pairs: z0 = r cos(2 pi u2), z1 = r sin(2 pi u2) with
// u1 = ((a >> 8) + 1) / 2^24, u2 = (b >> 8) / 2^24, r = sqrt(-2 ln u1), all in double, then cast to float.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace philox {

struct U32x4 {
  uint32_t v[4];
};

NFD_HOST_DEVICE inline U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  const uint64_t M0 = 0xD2511F53ull, M1 = 0xCD9E8D57ull;
  for (int round = 0; round < 10; ++round) {
    if (round) {  // key schedule: Weyl constants, modulo 2^32
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = M0 * c.v[0], p1 = M1 * c.v[2];
    uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    U32x4 n;
    n.v[0] = hi1 ^ c.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ c.v[3] ^ k1;
    n.v[3] = lo0;
    c = n;
  }
  return c;
}

// The four uint32 words of group `group` (elements 4*group .. 4*group+3).
NFD_HOST_DEVICE inline U32x4 words(uint64_t seed, uint32_t frame, uint32_t step, uint32_t group) {
  U32x4 c;
  c.v[0] = group;
  c.v[1] = frame;
  c.v[2] = step;
  c.v[3] = 0;
  return philox4x32_10(c, uint32_t(seed & 0xFFFFFFFFu), uint32_t(seed >> 32));
}

NFD_HOST_DEVICE inline void box_muller(uint32_t a, uint32_t b, float* z0, float* z1) {
  const double kPi = 3.14159265358979323846;
  double u1 = (double(a >> 8) + 1.0) * (1.0 / 16777216.0);
  double u2 = double(b >> 8) * (1.0 / 16777216.0);
  double r = sqrt(-2.0 * log(u1));
  double angle = 2.0 * kPi * u2;
  *z0 = float(r * cos(angle));
  *z1 = float(r * sin(angle));
}

// The four normals of group `group`.
NFD_HOST_DEVICE inline void normal4(uint64_t seed, uint32_t frame, uint32_t step, uint32_t group, float out[4]) {
  U32x4 w = words(seed, frame, step, group);
  box_muller(w.v[0], w.v[1], &out[0], &out[1]);
  box_muller(w.v[2], w.v[3], &out[2], &out[3]);
}

// Normal number e of (seed, frame, step).
NFD_HOST_DEVICE inline float normal(uint64_t seed, uint32_t frame, uint32_t step, uint64_t e) {
  float z[4];
  normal4(seed, frame, step, uint32_t(e >> 2), z);
  return z[e & 3];
}

}  // namespace philox
}  // namespace nfd
