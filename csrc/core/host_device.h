// NFD_HOST_DEVICE marks inline functions shared by the CPU backend and the CUDA kernels (tile math, index maps,
// Philox), so the CPU tests exercise the exact code the GPU runs.
#pragma once

#ifdef __CUDACC__
#define NFD_HOST_DEVICE __host__ __device__
#else
#define NFD_HOST_DEVICE
#endif
