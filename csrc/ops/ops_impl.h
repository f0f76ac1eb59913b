// Backend implementations behind the dispatchers of ops/ops.h: nfd::ops::cpu::NAME (ops/NAME_cpu.cc) and
// nfd::ops::cuda::NAME (ops/NAME_cuda.cu, only when built with CUDA). Each has exactly the signature of
// nfd::ops::NAME (no default arguments here: the dispatcher always passes every argument). The dispatcher
// ops/NAME.cc checks the output tensor's device and calls one of them.
#pragma once

#include "ops/ops.h"

namespace nfd {
namespace ops {

namespace cpu {
void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue, const Tensor* gate);
void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out);
void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out);
void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache, Tensor& v_cache);
void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out);
void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens);
void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent);
void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out);
void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad, Tensor& out, const Tensor* residual);
void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps, bool silu, Tensor& out);
void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out);
void to_uint8(const Context& ctx, const Tensor& image, Tensor& out);
void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image);
void copy(const Context& ctx, const Tensor& src, Tensor& dst);
}  // namespace cpu

#ifdef NFD_RT_WITH_CUDA
namespace cuda {
void linear(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Epilogue epilogue, const Tensor* gate);
void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out);
void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out);
void rope_qkv_split(const Context& ctx, const Tensor& qkv, const RopeParams& rope, Tensor& q_out, Tensor& k_cache, Tensor& v_cache);
void attention(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out);
void patchify(const Context& ctx, const Tensor& latent, int patch, Tensor& tokens);
void unpatchify_axpy(const Context& ctx, const Tensor& tokens, int patch, float dt, Tensor& latent);
void noise_mix(const Context& ctx, uint64_t seed, int step, float a, const Tensor& x, float b, Tensor& out);
void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad, Tensor& out, const Tensor* residual);
void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps, bool silu, Tensor& out);
void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out);
void to_uint8(const Context& ctx, const Tensor& image, Tensor& out);
void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image);
void copy(const Context& ctx, const Tensor& src, Tensor& dst);
}  // namespace cuda
#endif

}  // namespace ops
}  // namespace nfd
