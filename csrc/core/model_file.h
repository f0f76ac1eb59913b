// The .nfd loader: a safetensors file, memory-mapped, validated completely before any data is touched.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
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
  // Opens, maps and validates `path`: header length vs file size, JSON, metadata + version, config,
  // dtypes, shape x dtype == byte span, offsets inside the file and not overlapping, and that every
  // tensor the config needs (expected_tensors) is present with the right shape. Throws nfd::Error.
  static std::unique_ptr<ModelFile> open(const std::string& path);
  // Same checks on an in-memory buffer (used by the fuzzer and tests); the buffer must outlive the object.
  static std::unique_ptr<ModelFile> from_memory(const void* data, size_t size, const std::string& label);
  ~ModelFile();

  const Config& config() const { return config_; }
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  // fp32 view of a tensor (zero-copy, on the CPU); throws if absent or the shape differs from `shape`.
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  ModelFile() = default;
  void parse(const uint8_t* bytes, size_t size, const std::string& label);
  Config config_;
  std::map<std::string, TensorEntry> tensors_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
};

// Names and shapes of every tensor an NFD model with `cfg` has (the PyTorch state_dict of NFDModel).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg);

}  // namespace nfd
