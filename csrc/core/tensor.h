// Tensor: a typed view of memory on one device. Ownership lives in an Arena (allocated once at session open).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace nfd {

enum class DType : uint8_t { f32, bf16, f16, u8, i32 };
enum class Device : uint8_t { cpu, cuda };

// Header-only, so code that links no runtime objects (the CUDA op harness) uses the same helpers.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::u8: return "u8";
    case DType::i32: return "i32";
  }
  return "?";
}

inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// The user-facing names (Python's device= and dtype= arguments, CLI options): the one place that parses them.
inline Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu;
  if (s == "cuda" || s == "cuda:0") return Device::cuda;
  fail(ErrorKind::invalid_argument, "device must be 'cpu' or 'cuda', got '" + s + "'");
}
inline DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::f32;
  if (s == "bfloat16") return DType::bf16;
  if (s == "float16") return DType::f16;
  fail(ErrorKind::invalid_argument, "dtype must be one of ['float32', 'bfloat16', 'float16'], got '" + s + "'");
}

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  size_t bytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int rank() const { return int(shape.size()); }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
  bool defined() const { return data != nullptr; }
  std::string describe() const {  // e.g. "f32[4, 8, 8] on cpu"
    std::string s = std::string(dtype_name(dtype)) + "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "] on " + device_name(device);
  }
};

}  // namespace nfd
