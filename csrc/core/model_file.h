// The .nfd loader: a safetensors file, memory-mapped, validated completely before any data is touched.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace nfd {

constexpr int kFormatVersion = 1;

struct TensorEntry {
  std::string name;
  DType dtype = DType::f32;          // only F32 is accepted in format version 1
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;       // byte offsets relative to the data section
  const void* data = nullptr;        // points into the mapping
};

class ModelFile {
 public:
  // Opens, maps and validates `path` as a safetensors file with .nfd metadata: header length vs file size, JSON,
  // metadata + format version + a config string, dtypes, shape x dtype == byte span, offsets inside the file and
  // not overlapping. Throws nfd::Error. The config itself and the tensor set are the architecture's to check
  // (runtime/loader.h: ModelLoader does both).
  static std::unique_ptr<ModelFile> open(const std::string& path);
  // Same checks on an in-memory buffer (used by the fuzzer and tests); the buffer must outlive the object.
  static std::unique_ptr<ModelFile> from_memory(const void* data, size_t size, const std::string& label);
  ~ModelFile();

  const std::string& config_json() const { return config_json_; }
  const std::string& label() const { return label_; }  // the path, or the label of an in-memory file
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  // fp32 view of a tensor (zero-copy, on the CPU); throws if absent or the shape differs from `shape`.
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  ModelFile() = default;
  void parse(const uint8_t* bytes, size_t size, const std::string& label);
  std::string config_json_, label_;
  std::map<std::string, TensorEntry> tensors_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
};

}  // namespace nfd
