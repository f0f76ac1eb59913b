// Opening a .nfd file once: the file's format (core/model_file.h), its config and its tensor set (checked by the
// model's architecture), then sizing and loading the weights from that one parse (llama.cpp's
// llama_model_loader). Model::load, Session(path, ...), estimate_session_memory and the C ABI's validation all
// go through it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "backends/device.h"
#include "core/config.h"
#include "core/model_file.h"
#include "model/architecture.h"

namespace nfd {

class ModelLoader {
 public:
  // Opens and validates everything before any tensor data is read; throws nfd::Error (invalid_file naming the
  // file and the first problem, io when it cannot be read).
  static ModelLoader open(const std::string& path);
  static ModelLoader from_memory(const void* data, size_t size, const std::string& label);

  const Config& config() const { return cfg_; }
  const model::Architecture& architecture() const { return *arch_; }
  const ModelFile& file() const { return *file_; }

  // The bytes the weights take on `device` as `dtype` (counted on a measuring arena; nothing is allocated).
  size_t weight_bytes(Device device, DType dtype, int threads) const;
  // The weights on `arena`'s device as `dtype`.
  std::unique_ptr<model::Weights> load_weights(Arena& arena, const Context& ctx, DType dtype) const;

 private:
  explicit ModelLoader(std::unique_ptr<ModelFile> file);
  std::shared_ptr<const ModelFile> file_;
  Config cfg_;
  const model::Architecture* arch_ = nullptr;
};

}  // namespace nfd
