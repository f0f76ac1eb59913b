// out[N, H*hd] = softmax(q k^T / sqrt(hd)) v per head over the keys of cache slots
// state->visible_slots[0 .. num_visible), each slot holding N keys of k_cache[slot, h] (sinks + rolling window +
// the current frame's scratch slot). The slot list is read on the device, so a captured graph follows it.
//
// Flash-decoding on CUDA cores (first version; a tensor-core tile kernel is the planned next step):
//  * grid (query tiles of 32, heads, splits): the key range [0, num_visible * N) is cut into `splits` chunks so a
//    batch-1 frame fills every SM; the host picks splits from the SM count and the cache capacity (it never reads
//    num_visible: chunks past the live key range simply produce empty partials);
//  * 128 threads = 32 queries x 4 threads; each thread owns hd/4 interleaved dims of q and of the accumulator;
//    a q.k dot is 2 shuffles; keys / values come through shared memory 32 at a time, converted to fp32;
//  * online softmax in fp32 in log2 units (scores pre-scaled by log2(e)/sqrt(hd)), one rescale per key tile;
//  * splits > 1: unnormalised partials + (m, l) go to stream-ordered scratch and a combine kernel merges them
//    with tile::softmax_merge_weights (ops/attention_math.h, also tested on the CPU).
#include "ops/attention_math.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
constexpr int kBQ = 32, kTPQ = 4, kBK = 32, kThreads = kBQ * kTPQ;

struct AttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;             // [N, H*hd] (splits == 1)
  float* part_acc;       // [splits, H, N, hd] (splits > 1)
  float* part_ml;        // [splits, H, N, 2]
  const FrameState* state;
  int N, H, slots, splits;
  float scale_log2;      // log2(e) / sqrt(hd)
};

template <typename T, int HD>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttnArgs a) {
  constexpr int DPT = HD / kTPQ;  // dims per thread
  __shared__ float Ks[kBK][HD];
  __shared__ float Vs[kBK][HD];
  __shared__ int slot_of[FrameState::kMaxSlots];

  const int h = blockIdx.y, split = blockIdx.z;
  const int qi = threadIdx.x / kTPQ, sub = threadIdx.x % kTPQ;
  const int n = blockIdx.x * kBQ + qi;
  const int N = a.N, H = a.H;

  int nvis = a.state->num_visible;
  nvis = nvis < 0 ? 0 : (nvis > FrameState::kMaxSlots ? FrameState::kMaxSlots : nvis);
  for (int i = threadIdx.x; i < nvis; i += kThreads) slot_of[i] = a.state->visible_slots[i];

  const int64_t L = int64_t(nvis) * N;
  int64_t chunk = (L + a.splits - 1) / a.splits;
  chunk = (chunk + kBK - 1) / kBK * kBK;
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

  for (int64_t t0 = k_begin; t0 < k_end; t0 += kBK) {
    for (int e = threadIdx.x; e < kBK * HD; e += kThreads) {
      const int kk = e / HD, d = e % HD;
      const int64_t key = t0 + kk;
      float kv = 0.f, vv = 0.f;
      if (key < k_end) {
        const int slot = slot_of[key / N];
        if (slot >= 0 && slot < a.slots) {
          const int64_t off = ((int64_t(slot) * H + h) * N + key % N) * HD + d;
          kv = cudaops::to_f(kp[off]);
          vv = cudaops::to_f(vp[off]);
        }
      }
      Ks[kk][d] = kv;
      Vs[kk][d] = vv;
    }
    __syncthreads();
    float s[kBK];
    float m_tile = -INFINITY;
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float p = 0.f;
#pragma unroll
      for (int i = 0; i < DPT; ++i) p += qr[i] * Ks[kk][sub + kTPQ * i];
      p += __shfl_xor_sync(0xffffffffu, p, 1);
      p += __shfl_xor_sync(0xffffffffu, p, 2);
      s[kk] = t0 + kk < k_end ? p : -INFINITY;
      m_tile = fmaxf(m_tile, s[kk]);
    }
    const float m_new = fmaxf(st.m, m_tile);  // finite: the tile has at least one live key
    const float corr = exp2f(st.m - m_new);
    st.l *= corr;
#pragma unroll
    for (int i = 0; i < DPT; ++i) acc[i] *= corr;
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      const float p = exp2f(s[kk] - m_new);
      st.l += p;
#pragma unroll
      for (int i = 0; i < DPT; ++i) acc[i] += p * Vs[kk][sub + kTPQ * i];
    }
    st.m = m_new;
    __syncthreads();
  }

  if (n >= N) return;
  if (a.splits == 1) {
    T* op = static_cast<T*>(a.out);
    const float inv = st.l > 0.f ? 1.f / st.l : 0.f;
#pragma unroll
    for (int i = 0; i < DPT; ++i)
      op[int64_t(n) * H * HD + h * HD + sub + kTPQ * i] = cudaops::from_f<T>(acc[i] * inv);
  } else {
    const int64_t row = (int64_t(split) * H + h) * N + n;
#pragma unroll
    for (int i = 0; i < DPT; ++i) a.part_acc[row * HD + sub + kTPQ * i] = acc[i];
    if (sub == 0) {
      a.part_ml[row * 2] = st.m;
      a.part_ml[row * 2 + 1] = st.l;
    }
  }
}

// One warp per (head, token): merges the splits' partials and writes out[n, h*hd + d].
template <typename T>
__global__ void attention_combine_kernel(const float* part_acc, const float* part_ml, T* out, int N, int H, int hd,
                                         int splits) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N * H) return;
  const int h = warp / N, n = warp % N;
  for (int d = lane; d < hd; d += 32) {
    tile::SoftmaxState run = tile::softmax_empty();
    float o = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = (int64_t(s) * H + h) * N + n;
      tile::SoftmaxState part{part_ml[row * 2], part_ml[row * 2 + 1]};
      float wr, wp;
      const float l = tile::softmax_merge_weights(run, part, &wr, &wp);
      o = wr * o + wp * part_acc[row * hd + d];
      run.m = fmaxf(run.m, part.l > 0.f ? part.m : -INFINITY);
      run.l = l;
    }
    out[int64_t(n) * H * hd + h * hd + d] = cudaops::from_f<T>(run.l > 0.f ? o / run.l : 0.f);
  }
}

template <typename T, int HD>
void launch(AttnArgs a, cudaStream_t s) {
  dim3 grid((a.N + kBQ - 1) / kBQ, a.H, a.splits);
  attention_kernel<T, HD><<<grid, kThreads, 0, s>>>(a);
  cudaops::check_launch("attention");
}

template <typename T>
void run_typed(AttnArgs a, int hd, cudaStream_t s) {
  cudaops::Scratch acc(a.splits > 1 ? size_t(a.splits) * a.H * a.N * hd * sizeof(float) : 0, s);
  cudaops::Scratch ml(a.splits > 1 ? size_t(a.splits) * a.H * a.N * 2 * sizeof(float) : 0, s);
  a.part_acc = acc.get<float>();
  a.part_ml = ml.get<float>();
  switch (hd) {
    case 32: launch<T, 32>(a, s); break;
    case 64: launch<T, 64>(a, s); break;
    case 128: launch<T, 128>(a, s); break;
    default: fail(ErrorKind::unsupported, "attention: head_dim " + std::to_string(hd) + " (CUDA supports 32, 64, 128)");
  }
  if (a.splits > 1) {
    const int64_t threads = int64_t(a.N) * a.H * 32;
    attention_combine_kernel<T><<<cudaops::grid_1d(threads, 256), 256, 0, s>>>(a.part_acc, a.part_ml,
                                                                              static_cast<T*>(a.out), a.N, a.H, hd,
                                                                              a.splits);
    cudaops::check_launch("attention (combine)");
  }
}
}  // namespace

void cuda::attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out) {
  using namespace cudaops;
  const char* op = "attention";
  require_state(op, ctx);
  require_cuda_float(op, "q", q);
  require_cuda_float(op, "k_cache", k_cache);
  require_cuda_float(op, "v_cache", v_cache);
  require_cuda_float(op, "out", out);
  NFD_CHECK(q.dtype == k_cache.dtype && q.dtype == v_cache.dtype && q.dtype == out.dtype, invalid_argument,
            std::string(op) + ": q, caches and out must share one dtype, got " + q.describe() + ", " + k_cache.describe() +
                ", " + out.describe());
  NFD_CHECK(q.rank() == 3 && k_cache.rank() == 4 && k_cache.shape == v_cache.shape, invalid_argument,
            std::string(op) + ": expected q[H,N,hd] and caches [slots,H,N,hd], got " + q.describe() + " and " +
                k_cache.describe());
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2)), slots = int(k_cache.dim(0));
  NFD_CHECK(k_cache.dim(1) == H && k_cache.dim(2) == N && k_cache.dim(3) == hd, invalid_argument,
            std::string(op) + ": cache " + k_cache.describe() + " does not match q " + q.describe());
  NFD_CHECK(out.numel() == int64_t(N) * H * hd && out.dim(-1) == int64_t(H) * hd, invalid_argument,
            std::string(op) + ": out must be [N, H*hd], got " + out.describe());
  if (int64_t(N) * H * hd == 0) return;
  cudaStream_t s = stream_of(ctx);

  // Splits: aim for ~2 CTAs per SM, never more chunks than key tiles of the full cache (capacity bound).
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int base = ((N + kBQ - 1) / kBQ) * H;
  const int64_t max_tiles = (int64_t(std::min(slots, FrameState::kMaxSlots)) * N + kBK - 1) / kBK;
  int splits = (2 * sms + base - 1) / base;
  splits = int(std::max<int64_t>(1, std::min<int64_t>({int64_t(splits), max_tiles, 64})));

  AttnArgs a{q.data, k_cache.data, v_cache.data, out.data, nullptr, nullptr, ctx.state, N, H, slots, splits,
             float(1.4426950408889634 / std::sqrt(double(hd)))};
  switch (q.dtype) {
    case DType::bf16: run_typed<__nv_bfloat16>(a, hd, s); break;
    case DType::f16: run_typed<__half>(a, hd, s); break;
    default: run_typed<float>(a, hd, s); break;
  }
}

}  // namespace ops
}  // namespace nfd
