// cuDNN's convolution (fprop) behind ops::conv2d and ops::upsample2x_conv2d on CUDA, as an engine timed against
// CUTLASS's implicit GEMM at a shape's first call outside a graph capture (ops/conv2d_cuda.cu). Built with the cuDNN
// engines (NFD_RT_WITH_CUDNN; the code lives in ops/conv2d_cuda_cudnn.cc, host C++ only; the library is opened at
// run time: ops/cudnn_library.h). Unverified on a GPU until a GPU run says otherwise.
//
// Two ways to read our tensors, both timed where they apply:
//  * nchw: x [Cin, H, W], w [Cout, Cin, k, k] and out [Cout, Ho, Wo] as they are (no transposes of ours; cuDNN
//    reorders internally where its engine wants NHWC), bias and residual added in the graph.
//  * nhwc: the buffers of the CUTLASS path (ops/conv2d_cuda.cu): xs [Hi, Wi, Cin], wk [Co8, k, k, Cin], b8 [Co8],
//    prod [Ho, Wo, Co8]; the 2x nearest upsampling is folded into our NHWC transpose, the residual added by ours.
// The graph: conv_fprop, + bias (a pointwise add broadcast over pixels), + residual, fp32 in between, one rounding
// to the dtype at the end. Where cuDNN takes no plan for the fused graph, the convolution alone (plain = true in
// the Plan: the caller adds bias and residual).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace nfd {
namespace ops {
namespace cudnn_conv {

enum class Layout { nchw, nhwc };

struct Problem {
  DType dtype = DType::bf16;
  Layout layout = Layout::nchw;
  int Cin = 0, H = 0, W = 0;  // the image the convolution reads (for upsample2x: the upsampled one, nhwc only)
  int Cout = 0;               // filters as stored (nhwc: Co8, the zero filters included)
  int k = 0, stride = 1, pad = 0;
  bool bias = false, residual = false;  // residual: nchw only
};

// Output size of the problem.
inline int out_extent(int in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }

// A built graph of one problem (kept for the process).
struct Plan;

// Builds and keeps the graph of p (once per problem, thread-safe; later calls look it up) and returns it; null
// with *why when cuDNN is not loaded or takes no plan for it. Never throws. Building synchronises with the device:
// not while a stream is being captured.
const Plan* prepare(const Problem& p, std::string* why);
// Whether prepare(p) ran and built a usable plan (what a call inside a capture may run: a lookup).
bool prepared(const Problem& p);

// Whether the plan is the convolution alone (the caller then adds bias and residual), and what it runs (the
// engine, how long its plan took to build).
bool plain(const Plan& plan);
std::string describe(const Plan& plan);

// The workspace the plan needs (bytes; at most 64 MiB).
size_t workspace_bytes(const Plan& plan);

struct Pointers {
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;      // Problem::bias
  const void* residual = nullptr;  // Problem::residual
  void* y = nullptr;
};

// Runs the plan on stream s (graph-capturable: no allocation, no synchronisation). Throws nfd::Error (internal)
// when cuDNN reports a failure.
void run(const Plan& plan, const Pointers& ptr, void* workspace, cudaStream_t s);

}  // namespace cudnn_conv
}  // namespace ops
}  // namespace nfd
