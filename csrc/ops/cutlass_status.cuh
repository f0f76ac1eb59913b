// CUTLASS failures by name, with what CUDA can still tell. CUTLASS 2.x device operators read (and so clear) the
// CUDA launch error themselves and return kErrorInternal ("Error Internal"), which hides the cause: the message
// names the status, says the launch error was consumed, and adds the kernel's shared memory against the device's
// limit (the usual cause of a launch that fails on one GPU and not another).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/cutlass.h>

#include <string>

#include "core/error.h"

namespace nfd {
namespace cudaops {

inline const char* cutlass_status_name(cutlass::Status s) {
  switch (s) {
    case cutlass::Status::kSuccess: return "kSuccess";
    case cutlass::Status::kErrorMisalignedOperand: return "kErrorMisalignedOperand";
    case cutlass::Status::kErrorInvalidDataType: return "kErrorInvalidDataType";
    case cutlass::Status::kErrorInvalidLayout: return "kErrorInvalidLayout";
    case cutlass::Status::kErrorInvalidProblem: return "kErrorInvalidProblem";
    case cutlass::Status::kErrorNotSupported: return "kErrorNotSupported";
    case cutlass::Status::kErrorWorkspaceNull: return "kErrorWorkspaceNull";
    case cutlass::Status::kErrorInternal: return "kErrorInternal";
    case cutlass::Status::kErrorInsufficientDriver: return "kErrorInsufficientDriver";
    case cutlass::Status::kErrorArchMismatch: return "kErrorArchMismatch";
    case cutlass::Status::kErrorMemoryAllocation: return "kErrorMemoryAllocation";
    default: return "kInvalid";
  }
}

// Throws when `st` is not kSuccess: "<what>: CUTLASS kErrorInternal (Error Internal); ...". `smem_bytes` is the
// kernel's dynamic shared memory (sizeof its SharedStorage).
inline void check_cutlass(cutlass::Status st, const char* what, cudaStream_t s, size_t smem_bytes) {
  if (st == cutlass::Status::kSuccess) return;
  std::string m = std::string(what) + ": CUTLASS " + cutlass_status_name(st) + " (" + cutlassGetStatusString(st) + ")";
  if (st == cutlass::Status::kErrorInternal || st == cutlass::Status::kErrorArchMismatch) {
    const cudaError_t pending = cudaGetLastError();
    const cudaError_t stream = cudaStreamQuery(s);
    m += std::string("; CUDA error pending: ") + (pending == cudaSuccess ? "none (CUTLASS consumed the launch error)"
                                                                       : cudaGetErrorName(pending));
    m += std::string(", stream: ") + (stream == cudaSuccess ? "idle" : cudaGetErrorName(stream));
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess)
      m += "; the kernel needs " + std::to_string(smem_bytes) + " bytes of shared memory, the device allows " +
           std::to_string(optin);
    cudaGetLastError();
  }
  fail(st == cutlass::Status::kErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal, m);
}

}  // namespace cudaops
}  // namespace nfd
