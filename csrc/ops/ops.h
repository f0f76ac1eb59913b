// The op interface the model is written against (csrc/model). One frame per pass: N tokens of width D.
//
// Each op `name` is declared here and lives in ops/name.cc (its contract), ops/name_cpu.cc (fp32 reference
// of the runtime, OpenBLAS for GEMMs; bf16 with oneDNN's products where the CPU has AVX512-BF16 or AMX) and
// ops/name_cuda.cu (bf16/fp16/fp32, fp32 accumulation). The free
// function `nfd::ops::name` checks its arguments against the contract, once for every backend, then runs the
// backend of the output tensor's device; the backends only compute (and check their own limits: the CPU's
// fp32 / bf16, a CUDA kernel's head_dim). Math is restated next to each op; the PyTorch oracle is
// python/nfd_rt/reference/model.py; the op table tests/ops/test_ops.py runs every op on every backend.
//
// What every op's contract holds besides the shapes below (ops/contract.h words the errors):
//  * every tensor is defined; the float tensors of a call share one device and one dtype (f32, bf16 or f16);
//    to_uint8 / from_uint8 take u8 for the frame, copy converts among the float dtypes;
//  * an output overlaps none of the op's inputs, except where an op says it may work in place (out the very
//    tensor of an input): add_silu, layernorm_modulate, groupnorm, noise_mix, copy;
//  * ops that read the FrameState need ctx.state; where the host can read it (ctx.state on the CPU,
//    ctx.host_state on CUDA) its slots must lie in the cache and frame_index must be >= 0.
// Violations are ErrorKind::invalid_argument (ValueError in Python); a backend's limit is `unsupported`.
#pragma once

#include <cstdint>

#include "core/config.h"
#include "core/tensor.h"

namespace nfd {

// Per-frame scalars that change every frame. They live in memory of the session's device so that a captured
// CUDA graph reads the current values at replay time (nothing is re-captured per frame).
struct FrameState {
  static constexpr int kMaxSlots = kMaxCacheSlots;
  int32_t frame_index;   // absolute index of the frame being generated (RoPE time position, noise counter)
  int32_t write_slot;    // cache slot the current frame's K/V are written to (the scratch slot while denoising)
  int32_t num_visible;   // number of entries of visible_slots (cached frames visible to this frame + current)
  int32_t visible_slots[kMaxSlots];
};

// Execution context: the device, CPU thread count or CUDA stream, and a FrameState on that device.
struct Context {
  Device device = Device::cpu;
  int threads = 1;
  void* stream = nullptr;            // cudaStream_t on CUDA
  const FrameState* state = nullptr; // device pointer on CUDA, host pointer on CPU
  // Host copy of *state as of the ops being enqueued (may be null). Kernels read `state`; only a vendor kernel
  // whose grid is sized on the host (FlashInfer attention) reads this, and then a captured graph is valid for
  // that num_visible only (see attention_read_host_state).
  const FrameState* host_state = nullptr;
  // host_state never changes (model::FixedFrameState: attention within one frame): a graph that reads it need not
  // be captured again when the frame's state changes.
  bool host_state_fixed = false;
};

// Whether the visible slots are the cache's prefix 0 .. num_visible-1 (in any order): the keys are then the
// caches' first num_visible * N rows, as the vendor attention kernels (FlashInfer, cuDNN) read them.
inline bool visible_is_prefix(const FrameState& st) {
  if (st.num_visible < 1 || st.num_visible > FrameState::kMaxSlots) return false;
  uint64_t seen[(FrameState::kMaxSlots + 63) / 64] = {};
  for (int i = 0; i < st.num_visible; ++i) {
    const int s = st.visible_slots[i];
    if (s < 0 || s >= st.num_visible || (seen[s / 64] >> (s % 64)) & 1u) return false;
    seen[s / 64] |= uint64_t(1) << (s % 64);
  }
  return true;
}

namespace ops {

enum class Epilogue { none, gelu_tanh, gated_residual, gelu_erf, silu };

// y[M,N] = x[M,K] @ w[N,K]^T + bias[N]          (bias may be undefined)
//   gelu_tanh:      y = gelu_tanh(x w^T + b)
//   gelu_erf:       y = gelu(x w^T + b) = v / 2 (1 + erf(v / sqrt 2))   (exact GELU: the Oasis ViT VAE's MLP)
//   silu:           y = silu(x w^T + b) = v / (1 + exp(-v))              (Waypoint's MLPs)
//   gated_residual: y[M,N] += gate[N] * (x w^T + b)    (the adaLN-Zero gated residual, fused)
void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
            Epilogue epilogue = Epilogue::none, const Tensor* gate = nullptr);

// Picks, once per shape and process, the fastest GEMM engine for this linear on ctx's device and remembers it
// for ops::linear (CUDA: CUTLASS vs cuBLASLt, both timed on the GPU; a no-op elsewhere). Reads x, w, bias and
// writes nothing of the caller's; synchronises ctx's stream, so call it at session open (outside a capture).
void linear_prepare(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    Epilogue epilogue = Epilogue::none);

// y[M,N] += gate[N] * x[M,N]   (the gated residual of a GEMM run over several sessions' rows, member by member)
void gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y);

// The row normalisation of the *_modulate ops (statistics in fp32):
//   layer: (x - mean) / sqrt(var + eps)      (LayerNorm without affine)
//   rms:   x / sqrt(mean(x^2) + eps)         (weightless RMSNorm, as F.rms_norm: Waypoint-1.5, eps 2^-23)
enum class Norm { layer, rms };

// y[M,D] += gate[D] * x[M,D], then out[M,D] = Norm(y; eps) * (1 + scale[D]) + shift[D]:
// gated_add folded into the layernorm_modulate that follows it in a DiT block (the branch output x of proj or
// fc2 meets the residual stream y once, in the kernel that normalises it: no pass or kernel of its own).
void gated_add_layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y,
                                  const Tensor& shift, const Tensor& scale, float eps, Tensor& out,
                                  Norm norm = Norm::layer);

// out[M,D] = Norm(x[M,D]; eps) * (scale_offset + scale[D]) + shift[D]   (row statistics in fp32)
// scale_offset 1: adaLN's modulation (1 + scale); 0: a LayerNorm with affine (weight = scale, bias = shift).
void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        Tensor& out, float scale_offset = 1.f, Norm norm = Norm::layer);

// out[n] = silu(a[n] + b[n])     (the conditioning vector c = SiLU(time_embed + action_embed)); with b undefined
// out[n] = silu(a[n]) (a may then have any shape; out the same).
void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out);

// Split qkv[N, 3D] (q | k | v, each heads x head_dim), apply 3D RoPE to q and k and write
// q -> q_out[H, N, hd], k -> k_cache[write_slot, N, H, hd], v -> v_cache[write_slot, N, H, hd].
// The caches are token-major ([slots, N, H, hd] = [slots * N, H, hd]): the keys of consecutive slots are one
// contiguous range of rows (row stride H * hd), which is the layout vendor attention kernels take as-is.
// RoPE: pairs (2i, 2i+1) of a head; the first rope_dims[0]/2 pairs rotate by frame_index * theta^(-2j/dt),
// the next rope_dims[1]/2 by row * theta^(-2j/dh), the last rope_dims[2]/2 by col * theta^(-2j/dw);
// token n sits at row n / grid_cols, col n % grid_cols. Angles and cos/sin in double, rotation in fp32.
// With a `table` [N, P, 2] (P <= hd / 2; the operands' dtype), `rope` is not read: pair i < P of token n rotates
// by the angle whose (cos, sin) are table[n, i], pairs i >= P pass unchanged (partial rotation), the same for every
// head (the Oasis DiT's axial spatial RoPE, its ViT VAE's partial one; tables the architecture computes once).
//
// GQA: the caches may hold fewer heads than q, [slots, N, Hkv, hd] with H % Hkv == 0; qkv is then
// [N, (H + 2 Hkv) hd] (q | k | v). Waypoint-1.5's variant, by the RopeParams fields after grid_cols (defaults off):
//   qk_norm_eps > 0: q and k of each head RMS-normalised (weightless, eps qk_norm_eps) before the rotation;
//   deinterleave:    the rotated pair i = (x[2i], x[2i+1]) is written to (out[i], out[i + hd/2]), not in place;
//   time_pairs > 0 (with a table [N, P, 2], P + time_pairs = hd / 2): pairs P + j rotate by the frame, angle
//                    frame_index * time_scale * theta^(-2 floor(j / 2) / time_pairs) (each frequency for two
//                    adjacent pairs), angles and cos/sin in double;
//   v0 given:        value residual v = v + v_mix (v0 - v), with v0 the v columns of `v0` (layer 0's qkv, qkv's shape).
struct RopeParams {
  int rope_dims[3];
  double theta;
  int grid_cols;
  float qk_norm_eps = 0.f;
  bool deinterleave = false;
  int time_pairs = 0;
  double time_scale = 1.0;
  float v_mix = 0.f;
};
void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache,
                    Tensor& v_cache, const Tensor* table = nullptr, const Tensor* v0 = nullptr);

// out[N, H*hd] = softmax(q k^T / sqrt(hd)) v per head, over the keys of the cache slots
// state->visible_slots[0 .. num_visible) (each slot: the N keys k_cache[slot, :, h]); q[H, N, hd],
// k_cache / v_cache [slots, N, Hkv, hd] with H % Hkv == 0 (GQA: query head h reads K/V head h / (H / Hkv); Hkv = H
// is plain multi-head attention). Softmax statistics in fp32.
// keys = all_tokens: query n of head h sees every token of every visible slot (num_visible * N keys: a frame
// over the frames it sees). same_token: it sees only token n of each visible slot (num_visible keys: the Oasis
// DiT's temporal attention, each position over its own history).
enum class AttentionKeys { all_tokens, same_token };
void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
               AttentionKeys keys = AttentionKeys::all_tokens);
// Picks, once per shape and process, the fastest variant of the CUDA tensor-core attention at a full cache (128
// or 64 query rows per CTA at head_dim 64; the folded or separate softmax form), each timed on the GPU over every
// slot of these tensors, and remembers it for ops::attention; a variant that fails is left out and noted in
// kernels_used(). A no-op elsewhere: the CPU, float32, head_dims other than 32/64/128, NFD_RT_ATTENTION set,
// overrides (NFD_RT_ATTENTION_ROWS, NFD_RT_ATTENTION_SOFTMAX) that leave one variant, inside a capture. Reads
// q and the caches (any contents), writes out; synchronises ctx's stream, so call it at session open.
void attention_prepare(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       Tensor& out);
// Whether an attention call enqueued on this thread since the last call of this function read ctx.host_state (CUDA:
// NFD_RT_ATTENTION=flashinfer and FlashInfer's Hopper attention size their launch from num_visible; cuDNN runs only
// where the visible slots are the cache's prefix; each only for the shapes that run it, forced or chosen at open);
// clears it. A CUDA graph captured around such a call holds for one num_visible and prefix-ness, and the session
// re-captures it when either changes (while the cache fills); a graph whose calls read none is never re-captured.
bool attention_read_host_state(const Context& ctx);

// Patches: latent[C, h, w] <-> tokens[N, C*p*p], patch vector order (c, py, px), tokens row-major on the grid.
void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens);
// latent[C,h,w] = keep * latent + dt * unpatchify(tokens)   (keep 1: the Euler step of flow matching, fused with
// unpatchify; keep A, dt B: a DDIM step x = A x + B v; keep 0: latent is only written, its old values never read)
void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent,
                     float keep = 1.f);

// out[e] = a * x[e] + b * normal(seed, state->frame_index, step, e)   (Philox4x32-10, docs/rng.md)
// With x undefined: out = b * noise.
void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out);

// VAE ops, one image [C, H, W].
// The activation after a convolution: relu max(x, 0) (TAEHV's convolutions), clamp01 min(max(x, 0), 1) (TAEHV's image
// head, its clamp to [0, 1] before the pixel shuffle). NaN becomes 0.
enum class Activation { none, relu, clamp01 };
// out[Cout, Ho, Wo] = act(conv2d(x, w[Cout, Cin, k, k], bias; stride, pad) (+ residual[Cout,Ho,Wo] if defined))
void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
            Tensor& out, const Tensor* residual = nullptr, Activation act = Activation::none);
// out = cap * tanh(x / cap), any shape (TAEHV's latent soft clamp, cap 3). out may be x (in place).
void softcap(const Context& ctx, const Tensor& x, float cap, Tensor& out);
// Pixel shuffle by r: x[C r^2, H, W] -> out[C, H r, W r], out[c, h r + i, w r + j] = x[c r^2 + i r + j, h, w];
// inverse (pixel unshuffle): x[C, H r, W r] -> out[C r^2, H, W], the same map read backwards.
void pixel_shuffle(const Context& ctx, const Tensor& x, int r, bool inverse, Tensor& out);
// out[C, Ho, Wo] = bilinear resize of x[C, H, W] (align_corners false, no antialias: PyTorch's
// F.interpolate(mode="bilinear")): source coordinate max((d + 0.5) * in / out - 0.5, 0), its two neighbours (the last
// one repeated at the edge) weighted by the fraction; fp32 math.
void resize_bilinear(const Context& ctx, const Tensor& x, Tensor& out);
// out = GroupNorm(x; groups, eps) * gamma + beta, then SiLU when `silu`
void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
               bool silu, Tensor& out);
// out[C, 2H, 2W] = nearest-neighbour upsample of x[C, H, W]
void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out);
// out[Cout, 2H, 2W] = conv2d(upsample_nearest2x(x[Cin, H, W]), w[Cout, Cin, 3, 3], bias; stride 1, pad 1):
// the VAE decoder's upsampling step as one op (the CPU backend never builds the upsampled image).
void upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out);
// How pixels map to floats (each float expression in this order):
//   rounded (the NFD model):   u8 = clamp(floor((x + 1) * 127.5 + 0.5), 0, 255);   x = u / 127.5 - 1
//   truncated (Oasis, upstream's .byte()):  u8 = floor(clamp((x + 1) / 2, 0, 1) * 255);   x = (u / 255) * 2 - 1
//   unit (Waypoint's TAEHV, images in [0, 1]):  u8 = round_half_even(clamp(x, 0, 1) * 255);   x = u / 255
// NaN maps to 0 in every mode.
enum class Pixels { rounded, truncated, unit };
// image[3, H, W] in [-1,1] ([0, 1] for unit) -> u8[H, W, 3]
void to_uint8(const Context& ctx, const Tensor& image, Tensor& out, Pixels pixels = Pixels::rounded);
// u8[H, W, 3] -> image[3, H, W]
void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image, Pixels pixels = Pixels::rounded);

// Copy between any two tensors of the same shape (any devices, dtype conversion f32 <-> bf16/f16 included).
void copy(const Context& ctx, const Tensor& src, Tensor& dst);

}  // namespace ops
}  // namespace nfd
