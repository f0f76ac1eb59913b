// Backend implementations behind the ops of ops/ops.h: nfd::ops::cpu::NAME (ops/NAME_cpu.cc) and
// nfd::ops::cuda::NAME (ops/NAME_cuda.cu, only when built with CUDA). Each has exactly the signature of
// nfd::ops::NAME (no default arguments here: ops/NAME.cc always passes every argument). ops/NAME.cc checks the
// op's contract (ops/contract.h), then NFD_DISPATCH calls the backend of the output tensor's device, which
// only computes: it may take every argument as the contract promises it.
#pragma once

#include "core/error.h"
#include "ops/kernel_report.h"
#include "ops/ops.h"

namespace nfd {
namespace ops {

#define NFD_OP(name, params) void name params;
namespace cpu {
#include "ops/ops.def"
}  // namespace cpu

#ifdef NFD_RT_WITH_CUDA
namespace cuda {
#include "ops/ops.def"
// CUDA-only parts of ops::linear_prepare, ops::attention_prepare and ops::attention_read_host_state (ops/ops.h).
void linear_prepare(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    Epilogue epilogue);
void attention_prepare(const Context& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       Tensor& out);
bool attention_read_host_state();
}  // namespace cuda
#endif
#undef NFD_OP

// The last line of ops/NAME.cc, after the contract: runs backend::NAME for the device of `out` (the output), and
// counts the call when an op trace is on (ops/kernel_report.h).
#ifdef NFD_RT_WITH_CUDA
#define NFD_DISPATCH(NAME, out, ...)                                    \
  if (op_trace_on()) op_trace_record(#NAME, (out).shape);               \
  return (out).device == Device::cuda ? cuda::NAME(__VA_ARGS__) : cpu::NAME(__VA_ARGS__)
#else
#define NFD_DISPATCH(NAME, out, ...)                                                                          \
  if (op_trace_on()) op_trace_record(#NAME, (out).shape);                                                     \
  if ((out).device == Device::cuda)                                                                           \
    fail(ErrorKind::unsupported, "ops::" #NAME ": device cuda requested but nfd_rt was built without CUDA"); \
  return cpu::NAME(__VA_ARGS__)
#endif

}  // namespace ops
}  // namespace nfd
