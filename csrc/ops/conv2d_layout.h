// Index maps of the CUDA tensor-core convolutions (ops/conv2d_cuda.cu: CUTLASS; ops/conv2d_cuda_cudnn.cc: cuDNN),
// shared with their CPU test (tests/cpp/test_conv_layout.cc), which composes them with the NHWC/KRSC conv2d fprop
// definition (CUTLASS's) and cuDNN's strided [N, C, H, W] / [K, C, R, S] tensors, and checks the results against a
// direct [C, H, W] convolution.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace nfd {
namespace ops {
namespace conv_layout {

// 16 bytes of bf16/fp16: CUTLASS's vector access along the channels of the input (A, B) and the output (C, D).
constexpr int kChannelAlign = 8;

// Output channels rounded up to kChannelAlign (the extra filters are zero).
NFD_HOST_DEVICE inline int padded_channels(int cout) { return (cout + kChannelAlign - 1) / kChannelAlign * kChannelAlign; }

// Pixel p = y * wi + x of the NHWC input image (wi wide; the 2x nearest upsampling of x when up = 1) reads
// this pixel of x[C, H, w].
NFD_HOST_DEVICE inline int64_t nhwc_source_pixel(int64_t p, int wi, int w, int up) {
  return int64_t(int(p / wi) >> up) * w + (int(p % wi) >> up);
}

// Element i of the filters wk[Co8, taps, cin] (KRSC): its filter o, and its index in w[Cout, cin, taps]
// (meaningful for o < Cout; the padding filters are zero).
NFD_HOST_DEVICE inline int64_t krsc_source(int64_t i, int cin, int taps, int* o) {
  const int c = int(i % cin), tap = int(i / cin % taps);
  *o = int(i / (int64_t(cin) * taps));
  return (int64_t(*o) * cin + c) * taps + tap;
}

// The stream-ordered scratch of one convolution, in bytes: where the NHWC input, the KRSC filters, the biases
// (both Cout rounded up) and the NHWC product start (each on a 256-byte boundary), and the total.
struct ScratchLayout {
  int64_t xs = 0, wk, b8, prod, total;
  ScratchLayout(int64_t in_pixels, int64_t cin, int64_t out_pixels, int64_t cout, int64_t ks, int64_t elem_bytes) {
    const int64_t co8 = padded_channels(int(cout));
    wk = xs + align(in_pixels * cin * elem_bytes);
    b8 = wk + align(co8 * ks * ks * cin * elem_bytes);
    prod = b8 + align(co8 * elem_bytes);
    total = prod + align(out_pixels * co8 * elem_bytes);
  }
  static int64_t align(int64_t n) { return (n + 255) / 256 * 256; }
};

// cuDNN's view of an image [1, C, H, W] (its dimension order whatever the memory order): the strides of our
// [C, H, W] tensors (nhwc = false) or of the NHWC buffers of the tensor-core path (nhwc = true).
struct Strides4 {
  int64_t s[4];
};
inline Strides4 image_strides(bool nhwc, int64_t C, int64_t H, int64_t W) {
  if (nhwc) return {{H * W * C, 1, W * C, C}};
  return {{C * H * W, H * W, W, 1}};
}
// cuDNN's view of the filters [Cout, Cin, k, k]: the model's KCRS (nhwc = false) or the KRSC copy wk (nhwc = true).
inline Strides4 filter_strides(bool nhwc, int64_t Cin, int64_t k) {
  if (nhwc) return {{k * k * Cin, 1, k * Cin, Cin}};
  return {{Cin * k * k, k * k, k, 1}};
}

}  // namespace conv_layout
}  // namespace ops
}  // namespace nfd
