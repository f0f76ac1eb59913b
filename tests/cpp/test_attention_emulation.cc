// CPU emulation of the tensor-core attention kernel (csrc/ops/attention_cuda.cu, attention_mma_kernel) and its
// log-sum-exp merge, compiled without nvcc. The emulator follows the kernel step by step for every CTA, warp
// and lane, taking every address, ldmatrix source row, fragment coordinate and split range from
// ops/attention_mma.h (the functions the kernel calls), while the hardware side (cp.async zero-fill,
// ldmatrix / ldmatrix.trans, mma.m16n8k16 fragment layouts) is written here independently from the PTX ISA's
// tables. The result is compared with a double-precision attention over the same bf16-exact inputs.
// It checks that the kernel's index maps compose (swizzled stores vs ldmatrix reads, K as B, V through
// .trans, the S accumulators re-used as the A operand of P V, masking, splits, merge) and that every ldmatrix
// phase is free of shared-memory bank conflicts. What it cannot check: that the PTX tables transcribed here
// match the hardware (a GPU run of tests/cuda/test_ops_cuda.cu does), timing, and races.
// Prints "N passed, N failed"; exit code 1 on failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "core/tensor.h"  // FrameState::kMaxSlots via ops.h
#include "ops/attention_cudnn_layout.h"
#include "ops/attention_flashinfer_layout.h"
#include "ops/attention_math.h"
#include "ops/attention_mma.h"
#include "ops/ops.h"

using namespace nfd;
namespace am = nfd::tile::mma;

static int g_pass = 0, g_fail = 0;
static long fast_mask_elems = 0;  // scores the emulated kernel took through tile_all_live's unmasked path
static long liveness_mismatches = 0;  // tiles where the loaders' AND (folded form) differs from tile_all_live
static void expect(bool ok, const std::string& what, double detail = 0) {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %-72s %.3e\n", ok ? "PASS" : "FAIL", what.c_str(), detail);
}

// ---- hardware side, from the PTX ISA (independent of attention_mma.h) ---------------------------------------
// Fragments hold values (already rounded as the registers would hold them): A 4 regs x 2, B 2 regs x 2,
// C 4 floats, per lane.
struct FragA { float v[4][2]; };
struct FragB { float v[2][2]; };
struct FragC { float v[4]; };

// mma.m16n8k16 .row.col, A 16x16, B 16x8, C/D 16x8 fp32 (PTX ISA "Matrix Fragments for mma.m16n8k16"):
// groupID = lane >> 2, threadID_in_group = lane % 4.
//   A: a0,a1: (g, 2t + {0,1}); a2,a3: (g + 8, 2t + {0,1}); a4,a5: (g, 2t + 8 + {0,1}); a6,a7: (g + 8, 2t + 8 + {0,1})
//   B: b0,b1: (k = 2t + {0,1}, n = g); b2,b3: (k = 2t + 8 + {0,1}, n = g)
//   C: c0,c1: (g, 2t + {0,1}); c2,c3: (g + 8, 2t + {0,1})
static void hw_mma(FragC* d /*[32]*/, const FragA* a /*[32]*/, const FragB* b /*[32]*/) {
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < 2; ++j) A[arow[r]][acol[r] + j] = a[l].v[r][j];
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 2; ++j) B[2 * t + 8 * r + j][g] = b[l].v[r][j];
    const int crow[4] = {g, g, g + 8, g + 8}, ccol[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) C[crow[i]][ccol[i]] = d[l].v[i];
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double acc = C[i][j];
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
      C[i][j] = float(acc);
    }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const int crow[4] = {g, g, g + 8, g + 8}, ccol[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) d[l].v[i] = float(C[crow[i]][ccol[i]]);
  }
}

// Shared memory of 16-bit elements (stored as their float values) plus a bank-conflict counter for ldmatrix.
struct Smem {
  std::vector<float> e;
  long conflicts = 0, misaligned = 0;
};

// ldmatrix.sync.aligned.m8n8.x4(.trans).b16: lanes 8m .. 8m+7 give the addresses of rows 0..7 of matrix m.
// Non-trans: register m of thread T = matrix m, row T/4, columns 2(T%4), 2(T%4)+1.
// .trans:     register m of thread T = matrix m, (row 2(T%4), col T/4) and (row 2(T%4)+1, col T/4).
static void hw_ldmatrix_x4(Smem& sm, const int* addr /*[32] element offsets*/, bool trans, float out[32][4][2]) {
  for (int m = 0; m < 4; ++m) {
    std::set<int> groups;  // one phase reads matrix m's 8 rows of 16 bytes: 4-bank groups must differ
    for (int r = 0; r < 8; ++r) {
      const int a = addr[8 * m + r];
      if (a % 8) ++sm.misaligned;
      groups.insert(((a * 2) / 16) % 8);
    }
    sm.conflicts += 8 - long(groups.size());
  }
  for (int T = 0; T < 32; ++T)
    for (int m = 0; m < 4; ++m)
      for (int j = 0; j < 2; ++j) {
        const int row = trans ? 2 * (T % 4) + j : T / 4, col = trans ? T / 4 : 2 * (T % 4) + j;
        out[T][m][j] = sm.e[size_t(addr[8 * m + row] + col)];
      }
}

// An x4 ldmatrix of keys or values holds two n8 B fragments: matrices 0-1 the first, 2-3 the second.
static void split_x4(const float regs[32][4][2], FragB* b0 /*[32]*/, FragB* b1 /*[32]*/) {
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 2; ++j) {
      b0[l].v[0][j] = regs[l][0][j];
      b0[l].v[1][j] = regs[l][1][j];
      b1[l].v[0][j] = regs[l][2][j];
      b1[l].v[1][j] = regs[l][3][j];
    }
}

static float bf16(float x) { return tile::round_bf16(x); }

// ---- the kernel, emulated ------------------------------------------------------------------------------
struct Problem {
  int H, N, HD, slots;
  int mt;                // m16 row tiles per warp (the kernel's MT): block_rows(mt) queries per CTA
  bool folded;           // the softmax form (the kernel's kFolded): folded or separate, ops/attention_mma.h
  std::vector<int> vis;  // visible slot list (may hold an out-of-range slot: its keys are masked)
  int splits;
  std::vector<float> q, k, v;  // q [H, N, HD]; caches [slots, N, H, HD]; bf16-exact values
  int bk = am::kBK;            // keys per tile (the kernel's BK): kBK, or kBKWide
};

struct Partials {
  std::vector<float> o, lse;  // [splits, H, N, HD], [splits, H, N]
};

// One CTA (query tile qt, head h, split) of attention_mma_kernel: writes out (splits == 1) or the partials.
static void emulate_cta(const Problem& P, int qt, int h, int split, std::vector<float>& out, Partials& part,
                        long* conflicts, long* misaligned) {
  const int HD = P.HD, N = P.N, H = P.H, BQ = am::block_rows(P.mt), q0 = qt * BQ, BK = P.bk;
  std::vector<int> slot_of;
  for (int s : P.vis) slot_of.push_back(s >= 0 && s < P.slots ? s : -1);
  const int64_t L = int64_t(slot_of.size()) * N;
  int64_t tb, te;
  am::kv_split_range((L + BK - 1) / BK, P.splits, split, &tb, &te);
  if (tb >= te) {
    for (int r = 0; r < BQ; ++r) {
      const int n = q0 + r;
      if (n >= N) continue;
      if (P.splits > 1) part.lse[(size_t(split) * H + h) * N + n] = -INFINITY;
      else for (int d = 0; d < HD; ++d) out[size_t(n) * H * HD + h * HD + d] = 0.f;
    }
    return;
  }
  Smem Qs, Ks[2], Vs[2];
  Qs.e.assign(size_t(BQ) * HD, NAN);
  for (int s = 0; s < 2; ++s) Ks[s].e.assign(size_t(BK) * HD, NAN), Vs[s].e.assign(size_t(BK) * HD, NAN);
  std::vector<int> key_ok[2] = {std::vector<int>(size_t(BK)), std::vector<int>(size_t(BK))};
  bool tile_live[2];  // the folded form's liveness: the AND of every loader's flags (__syncthreads_and)
  // cp.async 16 bytes: 8 elements, zero-filled when the source size is 0.
  auto cp16 = [](Smem& sm, int dst, const float* src, bool valid) {
    for (int i = 0; i < am::kChunk; ++i) sm.e[size_t(dst + i)] = valid ? src[i] : 0.f;
  };
  for (int e = 0; e < BQ * HD / am::kChunk; ++e) {
    int r, c;
    am::load_chunk_coords(e, HD, &r, &c);
    const bool ok = q0 + r < N;
    cp16(Qs, am::smem_offset(r, c * am::kChunk, HD),
         P.q.data() + size_t(h) * N * HD + (ok ? size_t(q0 + r) * HD + c * am::kChunk : 0), ok);
  }
  auto load_kv = [&](int64_t t, int stage) {
    tile_live[stage] = true;
    for (int e = 0; e < BK * HD / am::kChunk; ++e) {
      int r, c;
      am::load_chunk_coords(e, HD, &r, &c);
      const int64_t key = t * BK + r;
      int64_t off = 0;
      bool ok = false;
      if (key < L) {
        const int slot = slot_of[size_t(key / N)];
        ok = slot >= 0;
        if (ok) off = am::kv_offset(slot, int(key % N), N, H, h, HD) + c * am::kChunk;
      }
      cp16(Ks[stage], am::smem_offset(r, c * am::kChunk, HD), P.k.data() + off, ok);
      cp16(Vs[stage], am::smem_offset(r, c * am::kChunk, HD), P.v.data() + off, ok);
      if (c == 0) key_ok[stage][r] = ok;
      tile_live[stage] = tile_live[stage] && ok;
    }
  };
  const float scale_log2 = float(1.4426950408889634 / std::sqrt(double(HD)));

  // Each row tile of each warp, on its own: the kernel reads a K or V fragment once for all of a warp's row
  // tiles, which gives every tile the same registers as reading it per tile.
  for (int warp = 0; warp < am::kWarps; ++warp)
  for (int mt = 0; mt < P.mt; ++mt) {
    const int row0 = am::row_tile_start(warp, mt, P.mt);
    // Registers of the warp's 32 lanes for this row tile.
    std::vector<FragA> qf(size_t(HD / 16) * 32);
    std::vector<FragC> o(size_t(HD / 8) * 32);
    for (auto& f : o) f = FragC{{0.f, 0.f, 0.f, 0.f}};
    float m_run[32][2], l_run[32][2];
    for (int l = 0; l < 32; ++l) m_run[l][0] = m_run[l][1] = -INFINITY, l_run[l][0] = l_run[l][1] = 0.f;

    for (int64_t t = tb; t < te; ++t) {
      const int stage = int(t - tb) & 1;
      load_kv(t, stage);  // (the kernel prefetches it one tile ahead into this stage)
      int addr[32];
      float regs[32][4][2];
      if (t == tb)
        for (int ks = 0; ks < HD / 16; ++ks) {
          for (int l = 0; l < 32; ++l) {
            int r, c;
            am::ldsm_q_src(l, ks, &r, &c);
            addr[l] = am::smem_offset(row0 + r, c, HD);
          }
          hw_ldmatrix_x4(Qs, addr, false, regs);
          for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 2; ++j) qf[size_t(ks) * 32 + l].v[i][j] = regs[l][i][j];
        }
      std::vector<FragC> s(size_t(BK / 8) * 32);
      for (auto& f : s) f = FragC{{0.f, 0.f, 0.f, 0.f}};
      for (int p = 0; p < BK / 16; ++p)
        for (int ks = 0; ks < HD / 16; ++ks) {
          for (int l = 0; l < 32; ++l) {
            int key, c;
            am::ldsm_k_src(l, p, ks, &key, &c);
            addr[l] = am::smem_offset(key, c, HD);
          }
          hw_ldmatrix_x4(Ks[stage], addr, false, regs);
          FragB b0[32], b1[32];
          split_x4(regs, b0, b1);
          hw_mma(&s[size_t(2 * p) * 32], &qf[size_t(ks) * 32], b0);
          hw_mma(&s[size_t(2 * p + 1) * 32], &qf[size_t(ks) * 32], b1);
        }
      // Online softmax, lane by lane as the kernel (quad reductions over lanes 4g .. 4g+3), in P.folded's form.
      const bool slot_live = am::tile_all_live(t * BK, BK, L, N, slot_of.data());
      liveness_mismatches += slot_live != tile_live[stage];
      const bool all_live = P.folded ? tile_live[stage] : slot_live;
      float mx[32][2], corr[32][2], offset[32][2], rowsum[32][2];
      for (int l = 0; l < 32; ++l) {
        mx[l][0] = m_run[l][0];
        mx[l][1] = m_run[l][1];
        rowsum[l][0] = rowsum[l][1] = 0.f;
        for (int j = 0; j < BK / 8; ++j)
          for (int i = 0; i < 4; ++i) {
            float& x = s[size_t(j) * 32 + l].v[i];
            const int key = 8 * j + am::c_col(l, i);
            const bool ok = all_live || key_ok[stage][key];
            x = !ok ? -INFINITY : P.folded ? x : x * scale_log2;
            if (all_live) ++fast_mask_elems;
            mx[l][i >> 1] = std::max(mx[l][i >> 1], x);
          }
      }
      for (int l0 = 0; l0 < 32; l0 += 4)
        for (int r = 0; r < 2; ++r) {
          float m = mx[l0][r];
          for (int d = 1; d < 4; ++d) m = std::max(m, mx[l0 + d][r]);
          for (int d = 0; d < 4; ++d) mx[l0 + d][r] = m;
        }
      for (int l = 0; l < 32; ++l) {
        for (int r = 0; r < 2; ++r) {
          offset[l][r] = am::folded_offset(mx[l][r], scale_log2);
          corr[l][r] = P.folded ? std::exp2(std::fma(m_run[l][r], scale_log2, -offset[l][r]))
                       : mx[l][r] == -INFINITY ? 1.f
                                               : std::exp2(m_run[l][r] - mx[l][r]);
        }
        for (int j = 0; j < BK / 8; ++j)
          for (int i = 0; i < 4; ++i) {
            float& x = s[size_t(j) * 32 + l].v[i];
            const float m = mx[l][i >> 1];
            if (P.folded) x = std::exp2(std::fma(x, scale_log2, -offset[l][i >> 1]));
            else x = m == -INFINITY ? 0.f : std::exp2(x - m);
            rowsum[l][i >> 1] += x;
          }
        for (int r = 0; r < 2; ++r) {
          l_run[l][r] = l_run[l][r] * corr[l][r] + rowsum[l][r];
          m_run[l][r] = mx[l][r];
        }
        for (int j = 0; j < HD / 8; ++j)
          for (int i = 0; i < 4; ++i) o[size_t(j) * 32 + l].v[i] *= corr[l][i >> 1];
      }
      for (int kk = 0; kk < BK / 16; ++kk) {
        FragA pa[32];
        for (int l = 0; l < 32; ++l)
          for (int ar = 0; ar < 4; ++ar) {
            const int j = am::p_ntile(kk, ar);
            for (int hf = 0; hf < 2; ++hf) pa[l].v[ar][hf] = bf16(s[size_t(j) * 32 + l].v[am::p_creg(ar, hf)]);
          }
        for (int qd = 0; qd < HD / 16; ++qd) {
          for (int l = 0; l < 32; ++l) {
            int key, c;
            am::ldsm_v_src(l, kk, qd, &key, &c);
            addr[l] = am::smem_offset(key, c, HD);
          }
          hw_ldmatrix_x4(Vs[stage], addr, true, regs);
          FragB b0[32], b1[32];
          split_x4(regs, b0, b1);
          hw_mma(&o[size_t(2 * qd) * 32], pa, b0);
          hw_mma(&o[size_t(2 * qd + 1) * 32], pa, b1);
        }
      }
    }
    for (int l0 = 0; l0 < 32; l0 += 4)
      for (int r = 0; r < 2; ++r) {
        float sum = 0.f;
        for (int d = 0; d < 4; ++d) sum += l_run[l0 + d][r];
        for (int d = 0; d < 4; ++d) l_run[l0 + d][r] = sum;
      }
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 2; ++r) {
        const int n = q0 + row0 + am::c_row(l, 2 * r);
        if (n >= N) continue;
        const float inv = l_run[l][r] > 0.f ? 1.f / l_run[l][r] : 0.f;
        for (int j = 0; j < HD / 8; ++j)
          for (int e = 0; e < 2; ++e) {
            const int d = 8 * j + am::c_col(l, 2 * r + e);
            const float val = o[size_t(j) * 32 + l].v[2 * r + e] * inv;
            if (P.splits == 1) out[size_t(n) * H * HD + h * HD + d] = bf16(val);
            else part.o[((size_t(split) * H + h) * N + n) * HD + d] = val;
          }
        const float m = P.folded ? m_run[l][r] * scale_log2 : m_run[l][r];  // log2 units
        if (P.splits > 1 && (l & 3) == 0) part.lse[(size_t(split) * H + h) * N + n] = am::lse_log2(m, l_run[l][r]);
      }
  }
  for (int s = 0; s < 2; ++s) *conflicts += Ks[s].conflicts + Vs[s].conflicts, *misaligned += Ks[s].misaligned + Vs[s].misaligned;
  *conflicts += Qs.conflicts;
  *misaligned += Qs.misaligned;
}

// attention_combine_kernel.
static void emulate_combine(const Problem& P, const Partials& part, std::vector<float>& out) {
  for (int h = 0; h < P.H; ++h)
    for (int n = 0; n < P.N; ++n) {
      float mx = -INFINITY;
      for (int s = 0; s < P.splits; ++s) mx = std::max(mx, part.lse[(size_t(s) * P.H + h) * P.N + n]);
      float wsum = 0.f;
      for (int s = 0; s < P.splits; ++s) wsum += am::lse_weight(part.lse[(size_t(s) * P.H + h) * P.N + n], mx);
      const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
      for (int d = 0; d < P.HD; ++d) {
        float acc = 0.f;
        for (int s = 0; s < P.splits; ++s) {
          const size_t row = (size_t(s) * P.H + h) * P.N + n;
          const float w = am::lse_weight(part.lse[row], mx);
          if (w > 0.f) acc += w * part.o[row * P.HD + d];
        }
        out[size_t(n) * P.H * P.HD + h * P.HD + d] = bf16(acc * inv);
      }
    }
}

static std::vector<double> reference(const Problem& P) {
  std::vector<double> out(size_t(P.N) * P.H * P.HD, 0.0);
  std::vector<std::pair<int, int>> keys;  // (slot, row) of every live key
  for (int s : P.vis)
    if (s >= 0 && s < P.slots)
      for (int r = 0; r < P.N; ++r) keys.push_back({s, r});
  if (keys.empty()) return out;
  for (int h = 0; h < P.H; ++h)
    for (int n = 0; n < P.N; ++n) {
      std::vector<double> sc(keys.size());
      double mx = -1e300;
      for (size_t j = 0; j < keys.size(); ++j) {
        const size_t base = size_t(am::kv_offset(keys[j].first, keys[j].second, P.N, P.H, h, P.HD));
        double d = 0;
        for (int c = 0; c < P.HD; ++c) d += double(P.q[(size_t(h) * P.N + n) * P.HD + c]) * P.k[base + c];
        sc[j] = d / std::sqrt(double(P.HD));
        mx = std::max(mx, sc[j]);
      }
      double l = 0;
      for (double& x : sc) l += (x = std::exp(x - mx));
      for (int c = 0; c < P.HD; ++c) {
        double o = 0;
        for (size_t j = 0; j < keys.size(); ++j)
          o += sc[j] * P.v[size_t(am::kv_offset(keys[j].first, keys[j].second, P.N, P.H, h, P.HD)) + c];
        out[size_t(n) * P.H * P.HD + h * P.HD + c] = o / l;
      }
    }
  return out;
}

static void run_form(const char* name, int H, int N, int HD, int slots, const std::vector<int>& vis, int splits,
                     float q_scale, std::mt19937& rng, int mt, bool folded, int bk = am::kBK) {
  Problem P{H, N, HD, slots, mt, folded, vis, splits, {}, {}, {}, bk};
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](std::vector<float>& x, size_t n, float sc) {
    x.resize(n);
    for (float& e : x) e = bf16(nd(rng) * sc);
  };
  fill(P.q, size_t(H) * N * HD, q_scale);
  fill(P.k, size_t(slots) * N * H * HD, 1.f);
  fill(P.v, size_t(slots) * N * H * HD, 1.f);
  std::vector<float> out(size_t(N) * H * HD, NAN);
  Partials part;
  if (splits > 1) {
    part.o.assign(size_t(splits) * H * N * HD, NAN);  // rows of empty splits stay NaN: the merge must skip them
    part.lse.assign(size_t(splits) * H * N, NAN);
  }
  long conflicts = 0, misaligned = 0;
  const int qtiles = (N + am::block_rows(mt) - 1) / am::block_rows(mt);
  for (int qt = 0; qt < qtiles; ++qt)
    for (int h = 0; h < H; ++h)
      for (int s = 0; s < splits; ++s) emulate_cta(P, qt, h, s, out, part, &conflicts, &misaligned);
  if (splits > 1) emulate_combine(P, part, out);
  const std::vector<double> ref = reference(P);
  double num = 0, den = 0;
  bool finite = true;
  for (size_t i = 0; i < out.size(); ++i) {
    finite = finite && std::isfinite(out[i]);
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  const double rel = std::sqrt(num / (den > 0 ? den : 1));
  char buf[200];
  std::snprintf(buf, sizeof buf, "emulated mma attention %s (H=%d N=%d hd=%d vis=%zu splits=%d %dx%d, %s)", name,
                H, N, HD, vis.size(), splits, am::block_rows(mt), bk, folded ? "folded" : "separate");
  expect(finite && rel < 8e-3, buf, rel);  // P is rounded to bf16 (as in the kernel), the output too
  std::snprintf(buf, sizeof buf, "  ldmatrix rows 16-byte aligned, no bank conflicts (%s)", name);
  expect(conflicts == 0 && misaligned == 0, buf, double(conflicts + misaligned));
}

// One problem through both softmax forms of the kernel.
static void run_case(const char* name, int H, int N, int HD, int slots, std::vector<int> vis, int splits,
                     float q_scale, std::mt19937& rng, int mt = 2) {
  for (bool folded : {false, true}) run_form(name, H, N, HD, slots, vis, splits, q_scale, rng, mt, folded);
}


// The largest |out - attention| over q [H, N, hd] against the first `keys` rows of token-major caches
// [*, Hkv, hd] (double precision; out [N, H * hd]); *ref_norm = the largest |attention| value.
static double max_error_vs_dense(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                 int H, int Hkv, int N, int hd, int64_t keys, const std::vector<float>& out,
                                 double* ref_norm) {
  const double scale = 1.0 / std::sqrt(double(hd));
  double err = 0;
  *ref_norm = 0;
  for (int h = 0; h < H; ++h)
    for (int n = 0; n < N; ++n) {
      const int g = h / (H / Hkv);
      std::vector<double> sc(static_cast<size_t>(keys));
      double m = -INFINITY, l = 0;
      for (int64_t j = 0; j < keys; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d)
          dot += double(q[size_t(h) * N * hd + size_t(n) * hd + d]) * k[size_t((j * Hkv + g) * hd + d)];
        m = std::max(m, sc[size_t(j)] = dot * scale);
      }
      for (double& x : sc) l += (x = std::exp(x - m));
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < keys; ++j) acc += sc[size_t(j)] * v[size_t((j * Hkv + g) * hd + d)];
        const double want = acc / l, got = out[size_t(n) * H * hd + size_t(h) * hd + d];
        err = std::max(err, std::fabs(got - want));
        *ref_norm = std::max(*ref_norm, std::fabs(want));
      }
    }
  return err;
}


// cuDNN's SDPA over key batches (ops/attention_cudnn_layout.h), emulated: S copies of q, K/V, O and the
// log-sum-exp are read and written through exactly the views the cuDNN graph declares; each batch attends over
// its seq_len_kv keys (an SDPA per batch, as cuDNN computes it: O normalised, Stats = max + ln(sum exp)); the
// batches merge as the shared merge kernel does, cuDNN's Stats read through lse_log2 (one batch: O straight into
// out). Against attention over the first nv * N keys. Checks the views' strides and batch offsets, that every
// live key is in exactly one batch, that no view reaches past the cache, and the merge. What it cannot check:
// cuDNN itself (a GPU run does).
static void run_sdpa_split(int H, int Hkv, int N, int hd, int slots, int nv, int S, std::mt19937& rng) {
  namespace sd = nfd::tile::sdpa;
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t total = int64_t(slots) * N, cache = total * Hkv * hd;
  std::vector<float> q(static_cast<size_t>(H) * N * hd), k(static_cast<size_t>(cache)), v(static_cast<size_t>(cache));
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  const sd::KeySplit split = sd::key_split(total, S);
  const int B = split.splits;
  const sd::View qv = sd::q_view(N, H, hd, B), kv = sd::kv_view(split, Hkv, hd);
  const sd::View ov = sd::o_view(N, H, hd, B), sv = sd::stats_view(N, H, B);
  std::vector<float> q_batches(size_t(B) * q.size());
  for (int b = 0; b < B; ++b) std::copy(q.begin(), q.end(), q_batches.begin() + size_t(b) * q.size());
  std::vector<int32_t> len(static_cast<size_t>(B));
  int64_t covered = 0, last_read = 0;
  for (int b = 0; b < B; ++b) {
    len[size_t(b)] = sd::seq_len_kv(split, b, int64_t(nv) * N);
    covered += len[size_t(b)];
    last_read = std::max(last_read, kv.offset(b, Hkv - 1, split.batch_keys - 1, hd - 1));
  }
  std::vector<float> out(size_t(N) * H * hd, 0.f), part(B > 1 ? size_t(B) * H * N * hd : 0), stats(size_t(B) * H * N);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int n = 0; n < N; ++n) {
        const int L = len[size_t(b)];
        if (L == 0) continue;  // cuDNN's rows of a batch without keys: not read by the merge
        std::vector<double> sc(static_cast<size_t>(L));
        double m = -INFINITY;
        for (int j = 0; j < L; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d)
            dot += double(q_batches[size_t(qv.offset(b, h, n, d))]) * k[size_t(kv.offset(b, h / (H / Hkv), j, d))];
          sc[size_t(j)] = dot * scale;
          m = std::max(m, sc[size_t(j)]);
        }
        double l = 0;
        for (double& x : sc) l += (x = std::exp(x - m));
        float* o = B > 1 ? part.data() : out.data();
        for (int d = 0; d < hd; ++d) {
          double acc = 0;
          for (int j = 0; j < L; ++j) acc += sc[size_t(j)] * v[size_t(kv.offset(b, h / (H / Hkv), j, d))];
          o[size_t(ov.offset(b, h, n, d))] = float(acc / l);
        }
        stats[size_t(sv.offset(b, h, n, 0))] = float(m + std::log(l));
      }
  if (B > 1)  // the merge kernel's arithmetic (attention_combine_kernel with cuDNN's Stats as lse_log2)
    for (int h = 0; h < H; ++h)
      for (int n = 0; n < N; ++n) {
        auto lse = [&](int b) { return sd::lse_log2(len[size_t(b)], stats[size_t(sv.offset(b, h, n, 0))]); };
        float lse_max = -INFINITY, wsum = 0.f;
        for (int b = 0; b < B; ++b) lse_max = std::max(lse_max, lse(b));
        for (int b = 0; b < B; ++b) wsum += am::lse_weight(lse(b), lse_max);
        for (int d = 0; d < hd; ++d) {
          float acc = 0.f;
          for (int b = 0; b < B; ++b) {
            const float w = am::lse_weight(lse(b), lse_max);
            if (w > 0.f) acc += w * part[size_t(ov.offset(b, h, n, d))];
          }
          out[size_t(n) * H * hd + size_t(h) * hd + d] = acc / wsum;
        }
      }
  double ref_norm = 0;
  const double err = max_error_vs_dense(q, k, v, H, Hkv, N, hd, int64_t(nv) * N, out, &ref_norm);
  char buf[160];
  std::snprintf(buf, sizeof buf, "cudnn views H=%d/%d N=%d hd=%d slots=%d visible=%d batches=%d (stride %ld x %ld)", H,
                Hkv, N, hd, slots, nv, B, long(split.stride), long(split.batch_keys));
  expect(covered == int64_t(nv) * N && last_read < cache && err <= 1e-5 * std::max(1.0, ref_norm), buf, err);
}

// FlashInfer's Hopper attention as ops/attention_cuda.cu runs it (tile::fi90): S copies of q laid out as
// run_fi90's cudaMemcpy2DAsync calls write them, the work list as flashinfer_plan_kernel writes it, each work
// item computed the way FlashInfer's persistent kernel defines it (a query tile of 192 rows of one head of one
// request against that request's keys; rows, keys, outputs and log-sum-exp (log2 units) addressed through the
// strides FlashInfer is given, with its layouts (rows, head_dim, heads) and lse (heads, rows)), an item without
// keys writing zeros and -inf, then the merge through partial_row. Against attention over the first nv * N keys.
// Also checks: every (range, head, query tile) in exactly one CTA's contiguous range, the CTA ranges balanced
// within one item, every live key in exactly one range per head, no key read at or past kv_len (the rows the
// TMA descriptor is given), ranges whole 128-key tiles but the last. What it cannot check: FlashInfer's kernel
// itself, and that its layouts are what its source says (a GPU run does).
static void run_fi90_plan(int H, int Hkv, int N, int hd, int slots, int nv, int asked, int ctas, std::mt19937& rng) {
  namespace fi = nfd::tile::fi90;
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t cache_keys = int64_t(slots) * N, kv_len = int64_t(nv) * N;
  std::vector<float> q(size_t(H) * N * hd), k(size_t(cache_keys) * Hkv * hd), v(k.size());
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  const fi::RaggedSplit r = fi::ragged_split(kv_len, N, H, asked);
  const int S = r.splits;
  const fi::Strides st = fi::ragged_strides(N, H, Hkv, hd, S);
  // q copies: cudaMemcpy2DAsync(dst + r * row, pitch S * row, q, pitch row, width row, height H) for each r.
  const size_t row = size_t(N) * hd;
  std::vector<float> qc(S > 1 ? size_t(S) * q.size() : 0);
  for (int c = 0; c < S && S > 1; ++c)
    for (int h = 0; h < H; ++h)
      std::copy(q.begin() + h * row, q.begin() + (h + 1) * row, qc.begin() + h * S * row + c * row);
  const std::vector<float>& qin = S > 1 ? qc : q;
  std::vector<float> out(size_t(N) * H * hd, 0.f), part(S > 1 ? size_t(S) * N * H * hd : 0);
  std::vector<float> lse(S > 1 ? size_t(S) * N * H : 0, 0.f);
  std::vector<float>& o = S > 1 ? part : out;
  // The work list and the persistent CTAs walking it.
  std::vector<int> seen(size_t(std::max(r.items, 1)), 0), key_hits(size_t(std::max<int64_t>(kv_len, 1)) * H, 0);
  bool plan_ok = S >= 1 && S <= std::max(asked, 1) && r.chunk % fi::kCtaKV == 0, in_bounds = true;
  int max_items = 0, min_items = r.items;
  const double scale = 1.0 / std::sqrt(double(hd)), log2e = 1.4426950408889634;
  for (int c = 0; c < ctas; ++c) {
    const int b = fi::work_begin(r.items, ctas, c), e = fi::work_begin(r.items, ctas, c + 1);
    max_items = std::max(max_items, e - b), min_items = std::min(min_items, e - b);
    for (int w = b; w < e; ++w) {
      const fi::WorkItem it = fi::work_item(r, kv_len, N, H, w);
      seen[size_t((it.split * H + it.head) * r.q_tiles + it.q_tile)]++;
      plan_ok = plan_ok && it.qo_len == N && it.qo_indptr == it.split * N && it.head < H && it.split < S;
      if (it.q_tile * fi::kCtaQ >= it.qo_len) continue;
      in_bounds = in_bounds && it.kv_indptr + it.kv_len <= kv_len && it.kv_len >= 0;
      const int g = it.head / (H / Hkv);
      for (int j = 0; j < it.kv_len && it.q_tile == 0; ++j) key_hits[size_t(it.kv_indptr + j) * H + it.head]++;
      for (int i = 0; i < fi::kCtaQ && it.q_tile * fi::kCtaQ + i < it.qo_len; ++i) {
        const int64_t qrow = it.qo_indptr + it.q_tile * fi::kCtaQ + i;  // ragged row
        float* orow = &o[size_t(qrow * st.o_n + it.head * st.o_h)];
        float* lrow = S > 1 ? &lse[size_t(it.head + qrow * H)] : nullptr;
        if (it.kv_len == 0) {  // FlashInfer's store_zero
          std::fill(orow, orow + hd, 0.f);
          if (lrow) *lrow = -INFINITY;
          continue;
        }
        std::vector<double> sc(static_cast<size_t>(it.kv_len));
        double m = -INFINITY, l = 0;
        for (int j = 0; j < it.kv_len; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d)
            dot += double(qin[size_t(qrow * st.q_n + it.head * st.q_h + d)]) *
                   k[size_t((it.kv_indptr + j) * st.kv_n + g * st.kv_h + d)];
          m = std::max(m, sc[size_t(j)] = dot);
        }
        for (double& x : sc) l += (x = std::exp((x - m) * scale));
        for (int d = 0; d < hd; ++d) {
          double acc = 0;
          for (int j = 0; j < it.kv_len; ++j)
            acc += sc[size_t(j)] * v[size_t((it.kv_indptr + j) * st.kv_n + g * st.kv_h + d)];
          orow[d] = float(acc / l);
        }
        if (lrow) *lrow = float(m * scale * log2e + std::log2(l));  // FlashInfer's row_max * sm_scale_log2 + log2(sum)
      }
    }
  }
  plan_ok = plan_ok && std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }) &&
            max_items - min_items <= 1;
  bool keys_once = true;
  for (int64_t j = 0; j < kv_len; ++j)
    for (int h = 0; h < H; ++h) keys_once = keys_once && key_hits[size_t(j) * H + h] == 1;
  if (S > 1)  // the merge kernel's arithmetic (attention_combine_kernel with TokenMajorRows and PartialsLse)
    for (int h = 0; h < H; ++h)
      for (int n = 0; n < N; ++n) {
        float lse_max = -INFINITY, wsum = 0.f;
        for (int c = 0; c < S; ++c) lse_max = std::max(lse_max, lse[size_t(fi::partial_row(c, h, n, N, H))]);
        for (int c = 0; c < S; ++c) wsum += am::lse_weight(lse[size_t(fi::partial_row(c, h, n, N, H))], lse_max);
        for (int d = 0; d < hd; ++d) {
          float acc = 0.f;
          for (int c = 0; c < S; ++c) {
            const int64_t pr = fi::partial_row(c, h, n, N, H);
            const float w = am::lse_weight(lse[size_t(pr)], lse_max);
            if (w > 0.f) acc += w * part[size_t(pr * hd + d)];
          }
          out[size_t(n) * H * hd + size_t(h) * hd + d] = acc / wsum;
        }
      }
  double ref_norm = 0;
  const double err = max_error_vs_dense(q, k, v, H, Hkv, N, hd, kv_len, out, &ref_norm);
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "flashinfer-sm90 plan H=%d/%d N=%d hd=%d keys=%ld asked=%d -> ranges=%d of %ld, items=%d on %d CTAs", H,
                Hkv, N, hd, long(kv_len), asked, S, long(r.chunk), r.items, ctas);
  expect(plan_ok && keys_once && in_bounds && err <= 1e-5 * std::max(1.0, ref_norm), buf, err);
}

int main() {
  std::mt19937 rng(11);
  // Split ranges: every tile in exactly one split, sizes differ by at most one, empty splits when tiles < splits.
  {
    bool ok = true;
    for (int64_t tiles : {0, 1, 5, 7, 174, 1000})
      for (int splits : {1, 2, 3, 8, 11, 64}) {
        int64_t next = 0, lo = 1 << 30, hi = 0;
        for (int s = 0; s < splits; ++s) {
          int64_t b, e;
          am::kv_split_range(tiles, splits, s, &b, &e);
          ok = ok && b == next && e >= b;
          next = e;
          lo = std::min(lo, e - b);
          hi = std::max(hi, e - b);
        }
        ok = ok && next == tiles && hi - lo <= 1;
      }
    expect(ok, "kv_split_range covers every key tile once, balanced");
  }
  // Split choice: nfd-310m full cache (96 CTAs of 64 queries x 16 heads, or 48 of 128 queries, 174 key tiles)
  // on 132 SMs.
  {
    const int s4 = am::choose_splits(96, 132, 4, 174, 64), s3 = am::choose_splits(96, 132, 3, 174, 64);
    const int s128 = am::choose_splits(48, 132, 2, 174, 64);
    const int tiny = am::choose_splits(4, 132, 4, 3, 64), big = am::choose_splits(2000, 132, 2, 500, 64);
    std::printf("  splits: 310m@4/SM %d, 310m@3/SM %d, 310m 128 rows@2/SM %d, tiny %d, big grid %d\n", s4, s3, s128,
                tiny, big);
    auto eff = [](int base, int s, int slots) {
      const int64_t c = int64_t(base) * s, w = (c + slots - 1) / slots;
      return double(c) / double(w * slots);
    };
    expect(eff(96, s4, 528) >= 0.9 && eff(96, s3, 396) >= 0.9 && eff(48, s128, 264) >= 0.9,
           "choose_splits fills >= 90% of the waves (310m)");
    expect(tiny == 3 && big == 1, "choose_splits: capped by key tiles; 1 when the grid is already large");
  }
  // Log-sum-exp merge of two partials == softmax over the union (log2 units).
  {
    const float s[5] = {0.5f, -1.f, 3.f, 2.f, -0.25f}, v[5] = {1.f, 2.f, -1.f, 0.5f, 4.f};
    auto part = [&](int b, int e, float* o, float* lse) {
      float m = -INFINITY, l = 0, acc = 0;
      for (int i = b; i < e; ++i) m = std::max(m, s[i]);
      for (int i = b; i < e; ++i) l += std::exp2(s[i] - m), acc += std::exp2(s[i] - m) * v[i];
      *o = l > 0 ? acc / l : 0.f;
      *lse = am::lse_log2(m, l);
    };
    float o1, l1, o2, l2, o3, l3, oall, lall;
    part(0, 2, &o1, &l1);
    part(2, 5, &o2, &l2);
    part(5, 5, &o3, &l3);  // empty
    part(0, 5, &oall, &lall);
    const float mx = std::max({l1, l2, l3});
    const float w1 = am::lse_weight(l1, mx), w2 = am::lse_weight(l2, mx), w3 = am::lse_weight(l3, mx);
    const float merged = (w1 * o1 + w2 * o2) / (w1 + w2 + w3);
    expect(std::fabs(merged - oall) < 1e-6f && w3 == 0.f && std::isinf(l3), "lse merge == softmax over the union",
           std::fabs(merged - oall));
  }
  // tile_all_live == every key of the tile is inside the visible keys and in a valid slot (brute force).
  {
    bool ok = true;
    long live_tiles = 0;
    for (int N : {5, 16, 37, 336})
      for (const std::vector<int>& slots : std::vector<std::vector<int>>{{0, 1, 2}, {3, -1, 0, 2}, {-1}, {4, 1, 0, 2, -1, 3}}) {
        const int64_t L = int64_t(slots.size()) * N;
        for (const int bk : {am::kBK, am::kBKWide})
          for (int64_t k0 = 0; k0 < L; k0 += bk) {
            bool brute = k0 + bk <= L;
            for (int64_t key = k0; brute && key < k0 + bk; ++key) brute = slots[size_t(key / N)] >= 0;
            const bool got = am::tile_all_live(k0, bk, L, N, slots.data());
            ok = ok && got == brute;
            live_tiles += got;
          }
      }
    expect(ok && live_tiles > 0, "tile_all_live == per-key liveness (tiles across slot borders, masked slots)",
           double(live_tiles));
  }
  // The swizzle is a permutation of each row's chunks.
  {
    bool ok = true;
    for (int hd : {32, 64, 128})
      for (int r = 0; r < 64; ++r) {
        std::set<int> seen;
        for (int c = 0; c < hd; c += 8) seen.insert(am::smem_offset(r, c, hd));
        ok = ok && int(seen.size()) == hd / 8 && *seen.begin() >= r * hd && *seen.rbegin() < (r + 1) * hd;
      }
    expect(ok, "smem_offset: each row's chunks permuted within the row");
  }
  // The kernel, emulated. Shapes: a partial query tile and key tiles straddling slot boundaries (N = 37), the
  // real frame size, every head_dim, one and several splits (some empty), slot lists out of order, a slot
  // outside the cache (masked), sharp softmax.
  // The row tiles per warp as the host picks them (mma_rows): 2 for head_dim 32/64, 1 for 128 and for 64 under
  // NFD_RT_ATTENTION_ROWS=64.
  run_case("first frame", 2, 37, 64, 4, {3}, 1, 1.f, rng);
  run_case("first frame", 2, 37, 64, 4, {3}, 1, 1.f, rng, 1);
  run_case("slots out of order", 2, 37, 64, 6, {0, 4, 1, 2, 5}, 1, 1.f, rng);
  run_case("hd32 split 3", 1, 37, 32, 6, {5, 0, 3, 4}, 3, 1.f, rng);
  run_case("hd128 split 2", 1, 37, 128, 5, {1, 0, 4}, 2, 1.f, rng, 1);
  run_case("more splits than tiles", 1, 20, 64, 3, {2}, 4, 1.f, rng);
  run_case("invalid slot masked", 2, 24, 64, 3, {0, 7, 2}, 2, 1.f, rng);
  run_case("first key tile all masked", 1, 64, 64, 3, {7, 1, 0}, 1, 1.f, rng);   // row max -inf, then live
  run_case("a split of masked keys only", 1, 64, 64, 3, {7, 1, 0}, 3, 1.f, rng);  // its lse -inf, weight 0
  run_case("sharp softmax", 1, 37, 64, 4, {0, 1, 2, 3}, 2, 8.f, rng);
  run_case("frame of 336 tokens", 1, 336, 64, 3, {1, 2, 0}, 5, 1.f, rng);
  run_case("frame of 336 tokens", 1, 336, 64, 3, {1, 2, 0}, 5, 1.f, rng, 1);
  run_case("a query tile past 128 rows", 1, 150, 64, 2, {1, 0}, 2, 1.f, rng);
  // The 64 x 128 tile (kBKWide, head_dim 64, one row tile a warp, folded): key tiles across slot borders and past
  // the last key, masked slots, splits with and without work, the real frame, a sharp softmax.
  for (const auto& c : std::vector<std::tuple<const char*, int, int, int, std::vector<int>, int, float>>{
           {"64x128: first frame", 2, 37, 4, {3}, 1, 1.f},
           {"64x128: slots out of order, split 3", 2, 37, 6, {0, 4, 1, 2, 5}, 3, 1.f},
           {"64x128: invalid slot masked", 2, 24, 3, {0, 7, 2}, 2, 1.f},
           {"64x128: first key tile all masked", 1, 128, 3, {7, 1, 0}, 1, 1.f},
           {"64x128: more splits than tiles", 1, 20, 3, {2}, 4, 1.f},
           {"64x128: sharp softmax", 1, 37, 4, {0, 1, 2, 3}, 2, 8.f},
           {"64x128: frame of 336 tokens", 1, 336, 3, {1, 2, 0}, 5, 1.f}})
    run_form(std::get<0>(c), std::get<1>(c), std::get<2>(c), 64, std::get<3>(c), std::get<4>(c), std::get<5>(c),
             std::get<6>(c), rng, 1, true, am::kBKWide);
  expect(fast_mask_elems > 0, "the unmasked path of fully live tiles ran", double(fast_mask_elems));
  expect(liveness_mismatches == 0, "the loaders' AND of their key flags == tile_all_live on every tile",
         double(liveness_mismatches));
  // cuDNN's SDPA over key batches: every fill level of a small cache (batches without keys at the first frames),
  // GQA, head_dims, more batches than slots, and nfd-310m's full cache (33 slots of 336 keys).
  for (int nv : {1, 2, 5, 6})
    for (int S : {1, 2, 3, 4, 7, 16}) run_sdpa_split(4, 2, 37, 64, 6, nv, S, rng);
  run_sdpa_split(2, 2, 20, 32, 3, 3, 5, rng);
  run_sdpa_split(2, 1, 9, 128, 4, 2, 3, rng);
  for (int S : {4, 5, 8}) run_sdpa_split(1, 1, 336, 64, 33, 33, S, rng);
  // FlashInfer's Hopper attention: ranges of whole key tiles at several fill levels (the last range partial,
  // more ranges asked than key tiles), GQA, query counts over and under its 192-row tile, more CTAs than items
  // and fewer, and nfd-310m's full cache (33 slots of 336 keys, 16 heads) on an H100/H200's 132 SMs.
  for (int nv : {1, 3, 6})
    for (int S : {1, 2, 3, 5, 16}) run_fi90_plan(4, 2, 37, 64, 6, nv, S, 7, rng);
  run_fi90_plan(2, 2, 200, 64, 3, 3, 4, 5, rng);
  run_fi90_plan(2, 1, 400, 32, 2, 2, 2, 16, rng);
  run_fi90_plan(1, 1, 129, 16, 1, 1, 8, 3, rng);
  run_fi90_plan(2, 2, 336, 64, 33, 33, 5, 132, rng);
  run_fi90_plan(1, 1, 336, 64, 33, 33, 8, 132, rng);
  {  // the plan's shape at nfd-310m's full cache: 11088 keys, 16 heads, 2 query tiles
    bool ok = true;
    for (int S : {1, 2, 4, 5, 8, 16}) {
      const auto r = nfd::tile::fi90::ragged_split(11088, 336, 16, S);
      ok = ok && r.splits <= S && r.splits >= 1 && r.chunk % 128 == 0 && (r.splits - 1) * r.chunk < 11088 &&
           r.splits * r.chunk >= 11088 && r.q_tiles == 2 && r.items == r.splits * 32;
    }
    ok = ok && nfd::tile::fi90::ragged_split(0, 336, 16, 4).splits == 0;
    expect(ok, "ragged_split: whole tiles, none empty, no keys -> no work");
  }
  {  // the split's shape: the last view ends at the cache's end, batches 0 .. S-2 own `stride` keys
    bool ok = true;
    for (int64_t total : {1, 7, 37, 222, 11088})
      for (int S : {1, 2, 3, 4, 5, 8, 16}) {
        const auto k = nfd::tile::sdpa::key_split(total, S);
        if (S > total) ok = ok && k.splits == int(total);
        ok = ok && k.stride >= 1 && k.batch_keys >= k.stride && (k.splits - 1) * k.stride + k.batch_keys == total &&
             k.batch_keys <= (total + k.splits - 1) / k.splits + k.splits - 1;
      }
    expect(ok, "key_split: views end at the cache's end; batch lengths within S - 1 of even");
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
