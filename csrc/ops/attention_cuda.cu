// out[N, H*hd] = softmax(q k^T / sqrt(hd)) v per head over the keys of cache slots
// state->visible_slots[0 .. num_visible); q [H, N, hd], caches token-major [slots, N, H, hd] (a key of head h
// is a row of hd elements, consecutive keys H*hd apart). The slot list is read on the device, so one captured
// graph serves every fill level of the cache. Four implementations behind the op, chosen per call
// (NFD_RT_ATTENTION = auto | ours | cudnn | flashinfer | simt, default auto: ours, or cuDNN for a shape where
// ops::attention_prepare measured it faster; nfd::kernels_used() records which one ran):
//
//  * ours, bf16/fp16, head_dim 32/64/128 ("mma"): a flash-attention tile kernel on tensor cores (sm_80+
//    mma.sync.m16n8k16, fp32 accumulation), index maps in ops/attention_mma.h:
//      - grid (query tiles of 128, heads, splits); 4 warps, each 2 row tiles of 16 queries (head_dim 128: 64
//        and 1; at head_dim 64 both, the faster per shape as ops::attention_prepare measured it at session
//        open, or NFD_RT_ATTENTION_ROWS), so each K/V fragment read from shared memory
//        feeds 4 MMAs; key tiles of 64 through shared memory (cp.async, double-buffered, 16-byte chunks
//        XOR-swizzled), Q held in registers as A fragments; at head_dim 64 also FlashAttention-2's 64 x 128
//        tile (64 query rows, 128 keys a tile, folded softmax: half the barriers and rescales), timed beside
//        the others at open, or NFD_RT_ATTENTION_KEYS=128 (unverified on a GPU);
//      - S = Q K^T (K via ldmatrix), online softmax in fp32 on the accumulators (log2 units, scores scaled by
//        log2(e)/sqrt(hd)) in one of two forms (tile::mma, "online softmax"): folded (one FFMA + ex2.approx a
//        score, liveness by __syncthreads_and) or separate (the form measured on the H200), the faster per shape
//        as attention_prepare measured it, or NFD_RT_ATTENTION_SOFTMAX; P re-packed in registers as the A
//        operand of O += P V (V via ldmatrix.trans);
//      - split over the key range: the live key tiles (num_visible * N / 64, read on the device) are shared
//        out evenly over the `splits` CTAs of a (query tile, head) (tile::mma::kv_split_range), so a
//        batch-1 frame fills every SM at any fill level; the host sizes the grid for the full cache and
//        never reads num_visible. Each split writes its rows normalised plus their log-sum-exp; a second
//        kernel merges them (tile::mma::lse_weight). CTAs whose range is empty write lse = -inf and exit.
//  * cudnn (built when CMake finds cudnn-frontend's headers; libcudnn.so.9 opened at run time): cuDNN's fused SDPA
//    through cudnn-frontend (ops/attention_cuda_cudnn.cc), the key range split into 1-16 batches so a frame's few
//    query tiles fill the GPU (ops/attention_cudnn_layout.h), the batches merged by their log-sum-exp. It reads
//    the keys as the caches' first rows, so it runs where the host state (ctx.host_state) shows the visible slots
//    are the cache's prefix, else ours runs. Unverified on a GPU.
//  * flashinfer (CMake -DNFD_RT_FLASHINFER=ON): FlashInfer's single-prefill kernel on the same tensors
//    (ops/attention_cuda_flashinfer.cu). Its grid comes from kv_len on the host (ctx.host_state): it runs
//    when the visible slots are the prefix 0 .. num_visible-1 of the cache (always the case for a session
//    without rollback), else ours runs.
//  * simt: flash-decoding on CUDA cores (the first version; fp32 always runs here): grid (32-query tiles,
//    heads, splits), 4 threads per query, keys/values through shared memory 32 at a time.
// keys = same_token (each query over its own token of the visible slots: num_visible keys) is one kernel of its
// own for every dtype, ops/attention_cuda_same_token.cuh.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/switches.h"
#include "ops/attention_cuda_common.cuh"
#include "ops/attention_cuda_merge.cuh"
#include "ops/attention_cuda_mma.cuh"
#include "ops/attention_cuda_same_token.cuh"
#include "ops/attention_cuda_simt.cuh"
#include "ops/attention_math.h"
#include "ops/choice_check_cuda.cuh"
#include "ops/kernel_report.h"

#ifdef NFD_RT_WITH_CUDNN
#include "ops/attention_cudnn.h"
#include "ops/attention_cudnn_layout.h"
#endif
#ifdef NFD_RT_WITH_FLASHINFER_SM90
#include "ops/attention_flashinfer_sm90.h"
#endif

namespace nfd {
namespace ops {

#ifdef NFD_RT_WITH_FLASHINFER
namespace cuda_detail {
// ops/attention_cuda_flashinfer.cu: q [H, N, hd], k/v the first kv_len rows of the token-major caches,
// out [N, H*hd]; bf16/fp16, head_dim 64. False when it does not take this problem (dtype, head_dim).
bool flashinfer_attention(DType dtype, const void* q, const void* k, const void* v, void* out, int N, int H,
                          int hd, int kv_len, cudaStream_t s);
}  // namespace cuda_detail
#endif

namespace {

enum class Impl { automatic, ours, cudnn, flashinfer, flashinfer_sm90, simt };

Impl requested_impl() {
  const std::string v =
      switch_value("NFD_RT_ATTENTION", {"auto", "ours", "cudnn", "flashinfer", "flashinfer-sm90", "simt"});
  return v == "auto"              ? Impl::automatic
         : v == "ours"            ? Impl::ours
         : v == "cudnn"           ? Impl::cudnn
         : v == "flashinfer"      ? Impl::flashinfer
         : v == "flashinfer-sm90" ? Impl::flashinfer_sm90
                                  : Impl::simt;
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

template <typename T, int HD, int MT, int BK, bool kFolded>
int mma_ctas_per_sm() {
  // Dynamic shared memory beyond 48 KB must be allowed per kernel (once per process; not a stream operation,
  // so it is also fine while a graph is being captured).
  static std::once_flag once;
  static int per_sm = 1;
  std::call_once(once, [] {
    auto kernel = attention_mma_kernel<T, HD, MT, BK, kFolded>;
    constexpr int smem = mma_smem_bytes<HD, MT, BK>();
    cudaops::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "cudaFuncSetAttribute (attention smem)");
    cudaops::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, tile::mma::kThreads, smem),
                   "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    per_sm = std::max(per_sm, 1);
  });
  return per_sm;
}

// The tensor-core kernel's variant per shape: query rows per CTA (128 = 2 row tiles per warp for head_dim 32 and
// 64; 64 for 128, whose accumulators would not fit twice in registers; at head_dim 64 both) and the softmax form
// (folded or separate). NFD_RT_ATTENTION_ROWS=64|128 and NFD_RT_ATTENTION_SOFTMAX=folded|separate force one;
// unset or auto: the fastest ops::attention_prepare measured for the shape at session open, and for shapes never
// prepared 128 rows and the folded form (each unless it failed in some attention_prepare).
// keys: the key tile, kBK, or kBKWide for the 64 x 128 tile (head_dim 64, 64 rows, folded form only;
// NFD_RT_ATTENTION_KEYS=64|128 forces one). cudnn_splits > 0: cuDNN's SDPA with that many key batches measured
// faster than ours (NFD_RT_ATTENTION=auto or cudnn); rows, folded and keys then still name ours' fastest variant,
// which runs where cuDNN does not take a call. fi90_splits > 0: likewise FlashInfer's Hopper attention with that
// many key ranges (NFD_RT_ATTENTION=auto or flashinfer-sm90, sm_90 builds with FlashInfer).
struct MmaChoice {
  int rows;
  bool folded;
  int cudnn_splits = 0;
  int keys = kBK;
  int fi90_splits = 0;
  bool simt = false;  // no variant of ours ran right at open: calls no vendor engine takes run the CUDA-core kernel
};
// Whether the choice runs the 64 x 128 tile (else keys is kBK).
bool wide_keys(const MmaChoice& c, int hd) {
  return hd == 64 && c.rows == 64 && c.folded && c.keys == tile::mma::kBKWide;
}
std::string variant_name(const MmaChoice& c, int hd) {
  return std::to_string(c.rows) + " rows " + (wide_keys(c, hd) ? "x 128 keys " : "") +
         (c.folded ? "folded" : "separate");
}
// The wider query tile of head_dim hd (its only one at 32 and 128).
constexpr int wide_rows(int hd) { return hd == 128 ? 64 : 128; }
using ShapeKey = std::tuple<int, int, int, int, int, int>;  // dtype, N, H, Hkv, hd, slots
std::mutex g_choice_mu;
bool g_rows128_failed = false;  // the 128-row tile failed in some attention_prepare
bool g_folded_failed = false;   // the folded form failed in some attention_prepare
std::map<ShapeKey, MmaChoice>& mma_choices() {
  static std::map<ShapeKey, MmaChoice> m;
  return m;
}

// The overrides: 0 / -1 for "auto" (measured at open), else the forced query rows (64, 128) or form (1 folded).
int rows_forced() {
  const std::string v = switch_value("NFD_RT_ATTENTION_ROWS", {"auto", "64", "128"});
  return v == "auto" ? 0 : std::stoi(v);
}
int folded_forced() {
  const std::string v = switch_value("NFD_RT_ATTENTION_SOFTMAX", {"auto", "folded", "separate"});
  return v == "auto" ? -1 : v == "folded";
}
int keys_forced() {
  const std::string v = switch_value("NFD_RT_ATTENTION_KEYS", {"auto", "64", "128"});
  return v == "auto" ? 0 : std::stoi(v);
}

MmaChoice mma_choice(int hd, const ShapeKey& key) {
  const int rows = hd == 64 ? rows_forced() : 0, folded = folded_forced();
  MmaChoice c{wide_rows(hd), true};
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    auto it = mma_choices().find(key);
    if (it != mma_choices().end()) {
      c = it->second;
    } else {
      if (hd == 64 && g_rows128_failed) c.rows = 64;
      c.folded = !g_folded_failed;
    }
  }
  if (rows) c.rows = rows;
  if (folded >= 0) c.folded = folded == 1;
  if (rows || folded >= 0) c.keys = kBK;  // a forced query tile or form means the 64-key tile, unless forced too
  if (const int keys = keys_forced()) {
    c.keys = keys;
    if (keys == tile::mma::kBKWide && hd == 64 && !rows && folded < 0) c.rows = 64, c.folded = true;
  }
  return c;
}

// The merge of `splits` partials into out [N, H * hd] (attention_combine_kernel: one warp per (head, token)).
template <typename T, typename P, typename Lse, typename Rows>
void merge_splits(const P* o, Lse lse, Rows rows, void* out, int N, int H, int hd, int splits, cudaStream_t s,
                  const char* what) {
  const int64_t threads = int64_t(N) * H * 32;
  attention_combine_kernel<<<cudaops::grid_1d(threads, 256), 256, 0, s>>>(o, lse, rows, static_cast<T*>(out), N, H,
                                                                         hd, splits);
  cudaops::check_launch(what);
}

template <typename T>
void combine(const AttnArgs& a, int hd, cudaStream_t s) {
  merge_splits<T>(a.part.o, PartialsLse{a.part.lse}, HeadMajorRows{a.N, a.H}, a.out, a.N, a.H, hd, a.splits, s,
                  "attention (combine)");
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

template <typename T, int HD, int MT, int BK, bool kFolded>
std::string run_mma(AttnArgs a, cudaStream_t s) {
  constexpr int kBQ = tile::mma::block_rows(MT);
  const int base = ((a.N + kBQ - 1) / kBQ) * a.H;
  const int64_t max_tiles = (int64_t(std::min(a.slots, FrameState::kMaxSlots)) * a.N + BK - 1) / BK;
  a.splits = pick_splits(base, mma_ctas_per_sm<T, HD, MT, BK, kFolded>(), max_tiles);
  with_partials<T>(a, HD, s, [&](const AttnArgs& args) {
    dim3 grid((args.N + kBQ - 1) / kBQ, args.H, args.splits);
    attention_mma_kernel<T, HD, MT, BK, kFolded><<<grid, tile::mma::kThreads, mma_smem_bytes<HD, MT, BK>(), s>>>(args);
    cudaops::check_launch("attention (tensor cores)");
  });
  return "ours: mma.sync m16n8k16, " + std::to_string(kBQ) + "x" + std::to_string(BK) + " tiles, " +
         (kFolded ? "folded" : "separate") + " softmax, splits=" + std::to_string(a.splits);
}

// The tensor-core kernel for head_dim HD in the chosen variant (mma_choice).
template <typename T, int HD>
std::string run_mma_choice(const AttnArgs& a, MmaChoice c, cudaStream_t s) {
  constexpr int kWideMT = wide_rows(HD) / tile::mma::block_rows(1);  // row tiles per warp of the wider tile
  if constexpr (HD == 64) {
    if (wide_keys(c, HD)) return run_mma<T, HD, 1, tile::mma::kBKWide, true>(a, s);
    if (c.rows == 64) return c.folded ? run_mma<T, HD, 1, kBK, true>(a, s) : run_mma<T, HD, 1, kBK, false>(a, s);
  }
  return c.folded ? run_mma<T, HD, kWideMT, kBK, true>(a, s) : run_mma<T, HD, kWideMT, kBK, false>(a, s);
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
constexpr DType dtype_of() {
  return std::is_same<T, __half>::value ? DType::f16 : std::is_same<T, float>::value ? DType::f32 : DType::bf16;
}

template <typename T>
std::string run_typed(const AttnArgs& a, int hd, bool mma, cudaStream_t s) {
  if constexpr (!std::is_same<T, float>::value) {  // tensor cores: 16-bit inputs only
    if (mma && (hd == 32 || hd == 64 || hd == 128)) {
      const MmaChoice c = mma_choice(hd, ShapeKey{int(dtype_of<T>()), a.N, a.H, a.Hkv, hd, a.slots});
      if (!c.simt) switch (hd) {
        case 32: return run_mma_choice<T, 32>(a, c, s);
        case 64: return run_mma_choice<T, 64>(a, c, s);
        default: return run_mma_choice<T, 128>(a, c, s);
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

// cuDNN's fused SDPA as an engine (ops/attention_cudnn.h; NFD_RT_ATTENTION=cudnn, or auto when it measured faster
// at open). It reads the keys as the caches' first rows, so it runs only where the host sees the visible slots are
// the cache's prefix (ctx.host_state); the key batches' lengths come from the device FrameState, so a captured
// graph serves every fill level of that prefix.
#if defined(NFD_RT_WITH_CUDNN) || defined(NFD_RT_WITH_FLASHINFER_SM90)
// The splits of a vendor engine (field: &MmaChoice::cudnn_splits or fi90_splits) the shape's attention_prepare
// chose (0: another was faster, or never prepared).
int chosen_splits(const ShapeKey& key, int MmaChoice::*field) {
  std::lock_guard<std::mutex> lock(g_choice_mu);
  auto it = mma_choices().find(key);
  return it == mma_choices().end() ? 0 : it->second.*field;
}
#endif

#ifdef NFD_RT_WITH_CUDNN
constexpr int kMaxCudnnSplits = 16;  // the scratch bound (ops/scratch_bound.cc) assumes at most this many

__global__ void sdpa_lengths_kernel(const FrameState* state, tile::sdpa::KeySplit split, int N, int32_t* len_q,
                                    int32_t* len_kv) {
  int nvis = state->num_visible;
  nvis = nvis < 0 ? 0 : (nvis > FrameState::kMaxSlots ? FrameState::kMaxSlots : nvis);
  for (int b = threadIdx.x; b < split.splits; b += blockDim.x) {
    len_q[b] = N;
    len_kv[b] = tile::sdpa::seq_len_kv(split, b, int64_t(nvis) * N);
  }
}

// cuDNN's Stats as the merge reads them (tile::sdpa::lse_log2): log2 units, -inf for a batch without keys.
struct CudnnLse {
  const float* stats;
  const int32_t* len_kv;
  __device__ float operator()(int batch, int64_t row) const {
    return tile::sdpa::lse_log2(len_kv[batch], stats[row]);
  }
};

cudnn_sdpa::Problem cudnn_problem(const Tensor& q, const Tensor& k_cache, int splits) {
  cudnn_sdpa::Problem p;
  p.dtype = q.dtype;
  p.H = int(q.dim(0)), p.N = int(q.dim(1)), p.hd = int(q.dim(2)), p.Hkv = int(k_cache.dim(2));
  p.keys = k_cache.dim(0) * k_cache.dim(1);
  p.splits = std::max(1, std::min<int>(splits, int(std::min<int64_t>(p.keys, kMaxCudnnSplits))));
  return p;
}

// What cuDNN's flash attention takes: 16-bit tensors, head_dim a multiple of 8 up to 128, 16-byte aligned data.
bool cudnn_takes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out) {
  const int hd = int(q.dim(2));
  return (q.dtype == DType::bf16 || q.dtype == DType::f16) && hd % 8 == 0 && hd <= 128 &&
         cudaops::aligned16(q.data) && cudaops::aligned16(k_cache.data) && cudaops::aligned16(v_cache.data) &&
         cudaops::aligned16(out.data);
}

// The key batches of a call: with NFD_RT_ATTENTION=cudnn, NFD_RT_ATTENTION_SPLITS when set (capped at 16), else the
// count attention_prepare measured, else enough batches for two CTAs of 128 query rows per SM; with auto, the
// measured count (0: ours was faster, or the shape was never prepared).
int cudnn_splits_for(Impl impl, const ShapeKey& key, int N, int H, int64_t keys) {
  if (impl == Impl::cudnn && std::getenv("NFD_RT_ATTENTION_SPLITS"))
    return std::min(kMaxCudnnSplits, pick_splits(1, 1, keys));  // pick_splits parses and checks the override
  if (const int chosen = chosen_splits(key, &MmaChoice::cudnn_splits)) return chosen;
  if (impl != Impl::cudnn) return 0;
  const int base = ((N + 127) / 128) * H;
  return std::max(1, std::min<int>({kMaxCudnnSplits, int(std::min<int64_t>(keys, 1 << 20)),
                                    (2 * sm_count() + base - 1) / base}));
}

// Runs the prepared graph of p on the call's tensors, state the device FrameState; returns what ran.
template <typename T>
std::string run_cudnn(const cudnn_sdpa::Problem& p, const cudnn_sdpa::Plan& plan, const Tensor& q,
                      const Tensor& k_cache, const Tensor& v_cache, Tensor& out, const FrameState* state,
                      cudaStream_t s) {
  using cudaops::Scratch;
  const tile::sdpa::KeySplit split = tile::sdpa::key_split(p.keys, p.splits);
  const int S = split.splits;
  Scratch len_q(sizeof(int32_t) * S, s), len_kv(sizeof(int32_t) * S, s);
  sdpa_lengths_kernel<<<1, 32, 0, s>>>(state, split, p.N, len_q.get<int32_t>(), len_kv.get<int32_t>());
  cudaops::check_launch("attention (cuDNN key batch lengths)");
  const size_t q_bytes = size_t(p.H) * p.N * p.hd * sizeof(T);
  Scratch q_batches(S > 1 ? S * q_bytes : 0, s), part(S > 1 ? S * q_bytes : 0, s);
  Scratch stats(S > 1 ? sizeof(float) * S * p.H * p.N : 0, s);
  Scratch workspace(cudnn_sdpa::workspace_bytes(plan), s);
  for (int b = 0; b < S && S > 1; ++b)
    cudaops::check(cudaMemcpyAsync(q_batches.get<char>() + b * q_bytes, q.data, q_bytes, cudaMemcpyDeviceToDevice,
                                   s),
                   "attention (cuDNN): copy of q");
  cudnn_sdpa::Pointers ptr;
  ptr.q_batches = S > 1 ? q_batches.get<void>() : q.data;
  ptr.k = k_cache.data, ptr.v = v_cache.data;
  ptr.out = S > 1 ? part.get<void>() : out.data;
  ptr.stats = stats.get<float>();
  ptr.seq_len_q = len_q.get<int32_t>(), ptr.seq_len_kv = len_kv.get<int32_t>();
  cudnn_sdpa::run(plan, ptr, workspace.get<void>(), s);
  if (S > 1)
    merge_splits<T>(part.get<T>(), CudnnLse{stats.get<float>(), len_kv.get<int32_t>()}, HeadMajorRows{p.N, p.H},
                    out.data, p.N, p.H, p.hd, S, s, "attention (cuDNN key batch merge)");
  return "cudnn: fused SDPA, " + std::to_string(S) + " key batch" + (S > 1 ? "es" : "");
}

std::string run_cudnn_typed(const cudnn_sdpa::Problem& p, const cudnn_sdpa::Plan& plan, const Tensor& q,
                            const Tensor& k_cache, const Tensor& v_cache, Tensor& out, const FrameState* state,
                            cudaStream_t s) {
  if (q.dtype == DType::f16) return run_cudnn<__half>(p, plan, q, k_cache, v_cache, out, state, s);
  return run_cudnn<__nv_bfloat16>(p, plan, q, k_cache, v_cache, out, state, s);
}
#endif

#ifdef NFD_RT_WITH_FLASHINFER_SM90
constexpr int kMaxFi90Splits = 16;  // the scratch bound (ops/scratch_bound.cc) assumes at most this many

// The key ranges that give every SM one work item (at most kMaxFi90Splits).
int fi90_one_item_per_sm(int N, int H) {
  const int per_range = H * ((N + tile::fi90::kCtaQ - 1) / tile::fi90::kCtaQ);
  return std::max(1, std::min(kMaxFi90Splits, (sm_count() + per_range - 1) / per_range));
}

// Its kernels are built for sm_90a alone (they run on compute capability 9.0 only).
bool device_is_sm90() {
  static const bool yes = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major == 9 && minor == 0;
  }();
  return yes;
}

// What it takes: 16-bit tensors at head_dim 64, whole GQA groups, 16-byte aligned data (TMA), an sm_90 device.
bool fi90_takes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out) {
  const int H = int(q.dim(0)), Hkv = int(k_cache.dim(2));
  return (q.dtype == DType::bf16 || q.dtype == DType::f16) && q.dim(2) == 64 && Hkv > 0 && H % Hkv == 0 &&
         cudaops::aligned16(q.data) && cudaops::aligned16(k_cache.data) && cudaops::aligned16(v_cache.data) &&
         cudaops::aligned16(out.data) && device_is_sm90();
}

// Key ranges of a call: NFD_RT_ATTENTION_SPLITS when set with NFD_RT_ATTENTION=flashinfer-sm90, else the count
// attention_prepare measured, else (forced only) enough ranges for one work item per SM; with auto, the measured
// count (0: not chosen).
int fi90_splits_for(Impl impl, const ShapeKey& key, int N, int H, int64_t keys) {
  if (impl == Impl::flashinfer_sm90 && std::getenv("NFD_RT_ATTENTION_SPLITS"))
    return std::min(kMaxFi90Splits, pick_splits(1, 1, keys));
  if (const int chosen = chosen_splits(key, &MmaChoice::fi90_splits)) return chosen;
  return impl == Impl::flashinfer_sm90 ? fi90_one_item_per_sm(N, H) : 0;
}

// One call over the first kv_len rows of the caches: S copies of q, FlashInfer's kernel into partials, our merge
// (with one range: q itself in, out itself out, no merge). Returns what ran.
template <typename T>
std::string run_fi90(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out, int64_t kv_len,
                     int splits, cudaStream_t s) {
  using cudaops::Scratch;
  if (kv_len <= 0) return "";
  cuda_detail::FlashInferSm90Call c;
  c.dtype = q.dtype;
  c.H = int(q.dim(0)), c.N = int(q.dim(1)), c.hd = int(q.dim(2)), c.Hkv = int(k_cache.dim(2));
  c.kv_len = kv_len;
  c.split = tile::fi90::ragged_split(kv_len, c.N, c.H, splits);
  c.ctas = sm_count();
  c.sm_scale = float(1.0 / std::sqrt(double(c.hd)));
  c.k = k_cache.data, c.v = v_cache.data;
  const int S = c.split.splits;
  const size_t row_bytes = size_t(c.N) * c.hd * sizeof(T), q_bytes = row_bytes * c.H;
  Scratch q_copies(S > 1 ? S * q_bytes : 0, s), part(S > 1 ? S * q_bytes : 0, s);
  Scratch lse(S > 1 ? sizeof(float) * S * c.N * c.H : 0, s);
  Scratch plan(sizeof(int32_t) * cuda_detail::flashinfer_sm90_plan_ints(c.split, c.ctas), s);
  for (int r = 0; r < S && S > 1; ++r)  // q [H, N, hd] -> [H, S * N, hd]: head h's S copies one after another
    cudaops::check(cudaMemcpy2DAsync(q_copies.get<char>() + r * row_bytes, S * row_bytes, q.data, row_bytes,
                                     row_bytes, c.H, cudaMemcpyDeviceToDevice, s),
                   "attention (FlashInfer sm90): copy of q");
  c.q_copies = S > 1 ? q_copies.get<void>() : q.data;
  c.partials = S > 1 ? part.get<void>() : out.data;  // one range: its rows [N, H, hd] are out [N, H * hd]
  c.lse = S > 1 ? lse.get<float>() : nullptr;
  c.plan = plan.get<int32_t>();
  if (!cuda_detail::flashinfer_sm90_attention(c, s)) return "";
  if (S > 1)
    merge_splits<T>(part.get<T>(), PartialsLse{lse.get<float>()}, TokenMajorRows{c.N, c.H}, out.data, c.N, c.H, c.hd,
                    S, s, "attention (FlashInfer sm90 key range merge)");
  return "flashinfer-sm90: BatchPrefillWithRaggedKVCache (wgmma + TMA, persistent), " + std::to_string(S) +
         " key range" + (S > 1 ? "s of " + std::to_string(c.split.chunk) + " keys" : "");
}

std::string run_fi90_typed(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
                           int64_t kv_len, int splits, cudaStream_t s) {
  if (q.dtype == DType::f16) return run_fi90<__half>(q, k_cache, v_cache, out, kv_len, splits, s);
  return run_fi90<__nv_bfloat16>(q, k_cache, v_cache, out, kv_len, splits, s);
}
#endif
}  // namespace

namespace {
// Whether an attention call on this thread read a ctx.host_state that can change (not host_state_fixed) since
// cuda::attention_read_host_state last cleared it: only calls of a shape that runs a vendor engine read it
// (ops::attention_read_host_state).
thread_local bool t_read_host_state = false;
#if defined(NFD_RT_WITH_CUDNN) || defined(NFD_RT_WITH_FLASHINFER_SM90)
// Why an engine that reads the caches' first num_visible * N rows (sized on the host) cannot take this call; ""
// when it can.
std::string prefix_problem(const Context& ctx) {
  if (!ctx.host_state) return "no host FrameState";
  t_read_host_state = t_read_host_state || !ctx.host_state_fixed;
  return visible_is_prefix(*ctx.host_state) ? "" : "the visible slots are not the cache's prefix";
}
#endif
}  // namespace

bool cuda::attention_read_host_state() {
  const bool read = t_read_host_state;
  t_read_host_state = false;
  return read;
}

namespace {
AttnArgs attn_args(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
                   const FrameState* state) {
  return AttnArgs{q.data, k_cache.data, v_cache.data, out.data, Partials{}, state, int(q.dim(1)), int(q.dim(0)),
                  int(k_cache.dim(0)), 1, float(1.4426950408889634 / std::sqrt(double(q.dim(2)))),
                  int(k_cache.dim(2))};
}

// What the tensor-core kernel needs besides a head_dim it was built for: 16-bit tensors, 16-byte aligned rows
// for cp.async (true for arena tensors: hd is a multiple of 8) and 4-byte aligned output pairs.
bool mma_takes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out) {
  return (q.dtype == DType::bf16 || q.dtype == DType::f16) && cudaops::aligned16(q.data) &&
         cudaops::aligned16(k_cache.data) && cudaops::aligned16(v_cache.data) &&
         (reinterpret_cast<uintptr_t>(out.data) & 3u) == 0;
}

// Checked choices (ops/choice_check_cuda.cuh) for attention: each candidate once on seeded q, K and V of the real
// shapes, against the CUDA-core kernel (the plainest; it ran on the H200) on the same inputs. q is drawn at +-8, so
// each query's softmax weight sits on some tens of keys: a wrong key or value row, or a dropped key tile, moves
// outputs by 0.1-0.8, where a right kernel's bf16 rounding (P rounded before P V) moves them by ~0.002. Returns per
// candidate "" or what it got wrong. When the check cannot run, or no candidate agrees (then the reference is the
// suspect), every verdict is "" and *note says so: the choice is made by time alone, as before checks.
template <typename T, int HD, typename Label, typename Run>
std::vector<std::string> check_candidates(const AttnArgs& a, const std::vector<MmaChoice>& candidates, Label label_of,
                                          Run run_candidate, const Tensor& q, const Tensor& k_cache,
                                          const Tensor& v_cache, const Tensor& out, cudaStream_t s,
                                          std::string* note) {
  constexpr float kTol = 0.02f;
  std::vector<std::string> wrong(candidates.size());
  if (!cudaops::choice_check_on()) return wrong;
  try {
    using cudaops::on_scratch;
    using cudaops::Scratch;
    Scratch qm(q.bytes(), s), km(k_cache.bytes(), s), vm(v_cache.bytes(), s), refm(out.bytes(), s),
        gotm(out.bytes(), s);
    const Tensor cq = on_scratch(q, qm), ck = on_scratch(k_cache, km), cv = on_scratch(v_cache, vm),
                 ref = on_scratch(out, refm);
    Tensor got = on_scratch(out, gotm);
    cudaops::fill_uniform(cq.ptr<T>(), cq.numel(), 1, 8.f, s);
    cudaops::fill_uniform(ck.ptr<T>(), ck.numel(), 2, 1.f, s);
    cudaops::fill_uniform(cv.ptr<T>(), cv.numel(), 3, 1.f, s);
    AttnArgs r = a;
    r.q = cq.data, r.k = ck.data, r.v = cv.data, r.out = ref.data;
    run_simt<T, HD>(r, s);
    // The reference (and the fills) finished before any candidate runs: a fault here is not blamed on candidate 0.
    cudaops::check(cudaStreamSynchronize(s), "checked choice: the seeded inputs and the CUDA-core reference");
    wrong = cudaops::check_each<T>(
        candidates.size(), got, ref, kTol, s, [&](size_t i) { run_candidate(candidates[i], cq, ck, cv, got); },
        [&](size_t i) { return label_of(candidates[i]); });
    const auto right = std::count(wrong.begin(), wrong.end(), std::string());
    if (right == 0) {
      *note = " check inconclusive (no candidate agreed with the CUDA-core kernel; chosen by time alone),";
      wrong.assign(candidates.size(), "");
    } else {
      *note = " each checked against the CUDA-core kernel,";
    }
  } catch (const std::exception& e) {
    cudaops::after_candidate_failure(s, e);
    *note = " check not run (" + std::string(e.what()).substr(0, 120) + "),";
    wrong.assign(candidates.size(), "");
  }
  return wrong;
}

// Times every variant of ours the overrides leave open (query rows x softmax form) and, with NFD_RT_ATTENTION
// auto or cudnn, cuDNN's SDPA at 1, 2, 4, 8 and 16 key batches, with every slot visible, and records the fastest of
// ours (and cuDNN where it was faster still). Each candidate is checked first (check_candidates). A candidate that
// computes wrong, or fails to build, launch or run, is noted and left out (a failing variant of ours also out of
// shapes never prepared), so a session opens on the others; only when every candidate fails does the session fail
// to open.
template <typename T, int HD>
void prepare_variants(AttnArgs a, const ShapeKey& key, const std::string& name, const Tensor& q,
                      const Tensor& k_cache, const Tensor& v_cache, Tensor& out, Impl impl, cudaStream_t s) {
  FrameState full{};
  full.num_visible = std::min(a.slots, FrameState::kMaxSlots);
  for (int i = 0; i < full.num_visible; ++i) full.visible_slots[i] = i;
  cudaops::Scratch state(sizeof(FrameState), s);
  cudaops::check(cudaMemcpyAsync(state.get<void>(), &full, sizeof(FrameState), cudaMemcpyHostToDevice, s),
                 "attention_prepare: FrameState upload");
  a.state = state.get<const FrameState>();

  const int rows_forced_to = HD == 64 ? rows_forced() : 0, folded_forced_to = folded_forced();
  const int keys_forced_to = keys_forced();
  std::vector<MmaChoice> candidates;
  if (impl != Impl::cudnn && impl != Impl::flashinfer_sm90) {
    if (keys_forced_to != tile::mma::kBKWide)
      for (int rows : HD == 64 ? std::vector<int>{64, 128} : std::vector<int>{wide_rows(HD)})
        for (bool folded : {false, true})
          if ((!rows_forced_to || rows == rows_forced_to) &&
              (folded_forced_to < 0 || folded == (folded_forced_to == 1)))
            candidates.push_back({rows, folded});
    if (HD == 64 && keys_forced_to != kBK && rows_forced_to != 128 && folded_forced_to != 0)
      candidates.push_back({64, true, 0, tile::mma::kBKWide});
  }
  std::string report = "measured at open over " + std::to_string(full.num_visible) + " slots:", first_error;
#ifdef NFD_RT_WITH_CUDNN
  if ((impl == Impl::automatic || impl == Impl::cudnn) && cudnn_takes(q, k_cache, v_cache, out)) {
    std::string why;
    for (int splits : {1, 2, 4, 8, 16}) {
      const cudnn_sdpa::Problem p = cudnn_problem(q, k_cache, splits);
      if (p.splits != splits) break;  // fewer keys than batches
      if (cudnn_sdpa::prepare(p, &why)) candidates.push_back({wide_rows(HD), true, splits});
      else if (!cudnn_sdpa::available()) break;  // not loaded: one line says why
      else report += " cudnn " + std::to_string(splits) + " batches: no plan (" + why.substr(0, 160) + "),";
    }
    if (!cudnn_sdpa::available()) report += " cudnn: " + cudnn_sdpa::status() + ",";
  }
#endif
  const int64_t full_keys = int64_t(full.num_visible) * a.N;
#ifdef NFD_RT_WITH_FLASHINFER_SM90
  // NFD_RT_FLASHINFER_SM90=off leaves it out of auto's choice (the GPU run's fallback and bisection).
  const bool fi90_timed = impl == Impl::flashinfer_sm90 ||
                          (impl == Impl::automatic && switch_on("NFD_RT_FLASHINFER_SM90"));
  if (fi90_timed && fi90_takes(q, k_cache, v_cache, out)) {
    // 1 .. 16 key ranges, and the count that gives every SM one work item; each as many as it really makes.
    std::vector<int> made;
    for (int asked : {1, 2, 4, 8, 16, fi90_one_item_per_sm(a.N, a.H)}) {
      const int splits = tile::fi90::ragged_split(full_keys, a.N, a.H, asked).splits;
      if (splits > 0 && std::find(made.begin(), made.end(), splits) == made.end()) {
        made.push_back(splits);
        MmaChoice c{wide_rows(HD), true};
        c.fi90_splits = splits;
        candidates.push_back(c);
      }
    }
  }
#endif
  (void)full_keys;
  const bool vendor_forced = impl == Impl::cudnn || impl == Impl::flashinfer_sm90;
  if (candidates.size() < 2 && !vendor_forced) return;  // nothing to choose

  auto label_of = [&](const MmaChoice& c) {
    return c.cudnn_splits  ? "cudnn " + std::to_string(c.cudnn_splits) + " batches"
           : c.fi90_splits ? "flashinfer-sm90 " + std::to_string(c.fi90_splits) + " ranges"
                           : variant_name(c, HD);
  };
  // One candidate on the given tensors: the session's when timed, the check's when checked.
  auto run_candidate = [&](const MmaChoice& c, const Tensor& q_, const Tensor& k_, const Tensor& v_, Tensor& out_) {
    if (c.fi90_splits) {
#ifdef NFD_RT_WITH_FLASHINFER_SM90
      run_fi90_typed(q_, k_, v_, out_, full_keys, c.fi90_splits, s);
#endif
    } else if (c.cudnn_splits) {
#ifdef NFD_RT_WITH_CUDNN
      const cudnn_sdpa::Problem p = cudnn_problem(q_, k_, c.cudnn_splits);
      const cudnn_sdpa::Plan* plan = cudnn_sdpa::prepare(p, nullptr);  // built above: a lookup
      run_cudnn_typed(p, *plan, q_, k_, v_, out_, a.state, s);
#endif
    } else {
      AttnArgs b = a;
      b.q = q_.data, b.k = k_.data, b.v = v_.data, b.out = out_.data;
      run_mma_choice<T, HD>(b, c, s);
    }
  };
  std::string check_note;
  const std::vector<std::string> wrong =
      check_candidates<T, HD>(a, candidates, label_of, run_candidate, q, k_cache, v_cache, out, s, &check_note);
  report += check_note;

  MmaChoice best_ours{}, best{};
  float best_ours_ms = -1.f, best_ms = -1.f;
  bool rows128_failed = false, folded_failed = false;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const MmaChoice& c = candidates[i];
    const bool vendor = c.cudnn_splits || c.fi90_splits;
    const std::string label = label_of(c);
    try {
      if (!wrong[i].empty()) fail(ErrorKind::internal, wrong[i]);  // left out as a failed launch is
      const float ms = cudaops::time_ms(s, [&] { run_candidate(c, q, k_cache, v_cache, out); });
      cudaops::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (attention_prepare)");
      char buf[64];
      std::snprintf(buf, sizeof buf, " %.4f ms", ms);
      report += " " + label + buf + ",";
      if (best_ms < 0.f || ms < best_ms) best = c, best_ms = ms;
      if (!vendor && (best_ours_ms < 0.f || ms < best_ours_ms)) best_ours = c, best_ours_ms = ms;
    } catch (const std::exception& e) {
      cudaops::after_candidate_failure(s, e, "attention_prepare: " + name, label);
      report += " " + label + " failed (" + std::string(e.what()).substr(0, 160) + "),";
      if (first_error.empty()) first_error = e.what();
      rows128_failed = rows128_failed || (HD == 64 && !vendor && c.rows == 128);
      folded_failed = folded_failed || (!vendor && c.folded && c.keys == kBK);
    }
  }
  if (best_ms < 0.f && vendor_forced) {
    const std::string engine = impl == Impl::cudnn ? "cudnn" : "flashinfer-sm90";
    note_kernel(name + " (choice)",
                report + (candidates.empty()  // nothing of the forced engine runs here: ours, as a call falls back to
                              ? " -> ours (NFD_RT_ATTENTION=" + engine +
                                    (impl == Impl::cudnn ? ": cuDNN takes no plan here)" : ": it takes no call here)")
                              : " -> none kept (NFD_RT_ATTENTION=" + engine + ": every form failed above; calls run it "
                                    "as forced)"));
    return;
  }
  NFD_CHECK(best_ms >= 0.f, internal,
            "attention_prepare: every variant of " + name + " failed: " + first_error + " (" + report + ")");
  // Where no variant of ours was timed right, calls that no vendor engine takes (visible slots not the cache's
  // prefix) run the CUDA-core kernel rather than a variant that just failed or computed wrong.
  const bool ours_timed = std::any_of(candidates.begin(), candidates.end(),
                                      [](const MmaChoice& c) { return !c.cudnn_splits && !c.fi90_splits; });
  MmaChoice kept = best_ours;
  if (best_ours_ms < 0.f) {
    kept = MmaChoice{HD == 64 && (rows128_failed || g_rows128_failed) ? 64 : wide_rows(HD),
                     !(folded_failed || g_folded_failed)};
    kept.simt = ours_timed;
  }
  kept.cudnn_splits = best.cudnn_splits;
  kept.fi90_splits = best.fi90_splits;
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    mma_choices()[key] = kept;
    g_rows128_failed = g_rows128_failed || rows128_failed;
    g_folded_failed = g_folded_failed || folded_failed;
  }
  report.back() = ' ';
  const std::string vendor_kept =
      kept.cudnn_splits  ? "cudnn " + std::to_string(kept.cudnn_splits) + " batches"
      : kept.fi90_splits ? "flashinfer-sm90 " + std::to_string(kept.fi90_splits) + " ranges"
                         : "";
  const std::string ours_kept = kept.simt ? "simt (no variant of ours ran right)" : variant_name(kept, HD);
  note_kernel(name + " (choice)",
              report + "-> " + (vendor_kept.empty() ? ours_kept : vendor_kept + " (ours: " + ours_kept + ")"));
}

template <typename T>
void prepare_typed(const AttnArgs& a, int hd, const ShapeKey& key, const std::string& name, const Tensor& q,
                   const Tensor& k_cache, const Tensor& v_cache, Tensor& out, Impl impl, cudaStream_t s) {
  switch (hd) {
    case 32: return prepare_variants<T, 32>(a, key, name, q, k_cache, v_cache, out, impl, s);
    case 64: return prepare_variants<T, 64>(a, key, name, q, k_cache, v_cache, out, impl, s);
    default: return prepare_variants<T, 128>(a, key, name, q, k_cache, v_cache, out, impl, s);
  }
}
}  // namespace

void cuda::attention_prepare(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             Tensor& out) {
  using namespace cudaops;
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2)), slots = int(k_cache.dim(0));
  const Impl impl = requested_impl();
  if ((hd != 32 && hd != 64 && hd != 128) || int64_t(N) * H == 0 || !mma_takes(q, k_cache, v_cache, out) ||
      impl == Impl::flashinfer || impl == Impl::simt)
    return;
  cudaStream_t s = stream_of(ctx);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
  if (cap != cudaStreamCaptureStatusNone) return;  // cannot time inside a capture: the defaults stay
  const ShapeKey key{int(q.dtype), N, H, int(k_cache.dim(2)), hd, slots};
  std::lock_guard<std::recursive_mutex> measuring(measure_mutex());
  bool measured;
  {
    std::lock_guard<std::mutex> lock(g_choice_mu);
    measured = mma_choices().count(key) > 0;
  }
  if (measured) {  // before (another session or layer), maybe under another NFD_RT_ATTENTION
#ifdef NFD_RT_WITH_CUDNN
    // Forced cuDNN still needs its plan built outside the capture, or the captured call falls back to ours.
    if (impl == Impl::cudnn && cudnn_takes(q, k_cache, v_cache, out))
      if (const int splits = cudnn_splits_for(impl, key, N, H, int64_t(slots) * N))
        cudnn_sdpa::prepare(cudnn_problem(q, k_cache, splits), nullptr);  // a failure is reported at the call
#endif
    return;
  }
  const AttnArgs a = attn_args(q, k_cache, v_cache, out, nullptr);  // prepare_variants sets its own FrameState
  const std::string name = std::string("attention ") + dtype_name(q.dtype) + " hd" + std::to_string(hd) +
                           " N=" + std::to_string(N) + " H=" + std::to_string(H) + " slots=" + std::to_string(slots);
  if (q.dtype == DType::bf16) prepare_typed<__nv_bfloat16>(a, hd, key, name, q, k_cache, v_cache, out, impl, s);
  else prepare_typed<__half>(a, hd, key, name, q, k_cache, v_cache, out, impl, s);
}

void cuda::attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
                     AttentionKeys keys) {
  using namespace cudaops;
  const int H = int(q.dim(0)), N = int(q.dim(1)), hd = int(q.dim(2)), slots = int(k_cache.dim(0));
  if (int64_t(N) * H * hd == 0) return;
  cudaStream_t s = stream_of(ctx);
  if (keys == AttentionKeys::same_token) {
    same_token::run(q, k_cache, v_cache, out, ctx.state, s);
    note_kernel(std::string("attention same_token ") + dtype_name(q.dtype) + " hd" + std::to_string(hd),
                "same_token: a warp per (token, head), online softmax");
    return;
  }
  const Impl impl = requested_impl();
  const std::string key = std::string("attention ") + dtype_name(q.dtype) + " hd" + std::to_string(hd);

  if (impl == Impl::flashinfer) {
#ifdef NFD_RT_WITH_FLASHINFER
    NFD_CHECK(ctx.host_state != nullptr, invalid_argument,
              "ops::attention: NFD_RT_ATTENTION=flashinfer needs ctx.host_state (the host copy of the FrameState)");
    const bool half = q.dtype == DType::bf16 || q.dtype == DType::f16;
    t_read_host_state = t_read_host_state || !ctx.host_state_fixed;
    if (half && k_cache.dim(2) == H && visible_is_prefix(*ctx.host_state)) {  // our wrapper: no GQA
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

  const ShapeKey shape{int(q.dtype), N, H, int(k_cache.dim(2)), hd, slots};
  (void)shape;
  std::string why_not_fi90;
  if (impl == Impl::flashinfer_sm90 || impl == Impl::automatic) {
#ifdef NFD_RT_WITH_FLASHINFER_SM90
    const int splits = fi90_splits_for(impl, shape, N, H, k_cache.dim(0) * N);
    if (splits > 0) {
      why_not_fi90 = prefix_problem(ctx);
      if (why_not_fi90.empty() && !fi90_takes(q, k_cache, v_cache, out))
        why_not_fi90 = "not a problem it takes (dtype, head_dim 64, GQA groups, alignment, an sm_90 GPU)";
      if (why_not_fi90.empty()) {
        const std::string ran =
            run_fi90_typed(q, k_cache, v_cache, out, int64_t(ctx.host_state->num_visible) * N, splits, s);
        if (!ran.empty()) {
          note_kernel(key, ran);
          return;
        }
        why_not_fi90 = "no visible keys";
      }
    }
#else
    if (impl == Impl::flashinfer_sm90)
      fail(ErrorKind::unsupported,
           "NFD_RT_ATTENTION=flashinfer-sm90, but nfd_rt was built without it (CMake -DNFD_RT_FLASHINFER=ON with 90a "
           "in NFD_RT_CUDA_ARCHITECTURES, docs/cuda-backend.md)");
#endif
  }

  std::string why_not_cudnn;
  if (impl == Impl::cudnn || impl == Impl::automatic) {
#ifdef NFD_RT_WITH_CUDNN
    const int splits = cudnn_splits_for(impl, shape, N, H, k_cache.dim(0) * N);
    if (splits > 0) {
      why_not_cudnn = prefix_problem(ctx);
      if (why_not_cudnn.empty() && !cudnn_takes(q, k_cache, v_cache, out))
        why_not_cudnn = "not a problem cuDNN takes (dtype, head_dim, alignment)";
      if (why_not_cudnn.empty()) {
        const cudnn_sdpa::Problem p = cudnn_problem(q, k_cache, splits);
        cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
        check(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
        if (cap != cudaStreamCaptureStatusNone && !cudnn_sdpa::prepared(p))
          why_not_cudnn = "no cuDNN graph was built for it before the capture (ops::attention_prepare at open)";
        else if (const cudnn_sdpa::Plan* plan = cudnn_sdpa::prepare(p, &why_not_cudnn)) {
          note_kernel(key, run_cudnn_typed(p, *plan, q, k_cache, v_cache, out, ctx.state, s));
          return;
        }
      }
    }
#else
    if (impl == Impl::cudnn)
      fail(ErrorKind::unsupported,
           "NFD_RT_ATTENTION=cudnn, but nfd_rt was built without cuDNN (cudnn-frontend headers: CMake NFD_RT_CUDNN, "
           "docs/cuda-backend.md)");
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
  if (impl == Impl::flashinfer_sm90)
    ran += " (FlashInfer sm90 requested; it does not take this call: " + why_not_fi90 + ")";
  if (impl == Impl::cudnn) ran += " (cuDNN requested; it does not take this call: " + why_not_cudnn + ")";
  note_kernel(key, ran);
}

}  // namespace ops
}  // namespace nfd
