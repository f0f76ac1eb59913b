// The cuDNN engines' graph code compiled as one translation unit: cudnn-frontend's header-only templates cost about
// a minute of host compiler time in each file that includes them, so the two engines share that minute. Each
// engine keeps its own file (ops/attention_cuda_cudnn.cc, ops/conv2d_cuda_cudnn.cc; their names live in their own
// namespaces, cudnn_sdpa and cudnn_conv); CMake compiles this file instead of them.
#include "ops/attention_cuda_cudnn.cc"
#include "ops/conv2d_cuda_cudnn.cc"
