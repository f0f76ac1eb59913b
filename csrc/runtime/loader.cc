#include "runtime/loader.h"

#include <map>

#include "core/error.h"

namespace nfd {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

ModelLoader ModelLoader::open(const std::string& path) { return ModelLoader(ModelFile::open(path)); }

ModelLoader ModelLoader::from_memory(const void* data, size_t size, const std::string& label) {
  return ModelLoader(ModelFile::from_memory(data, size, label));
}

ModelLoader::ModelLoader(std::unique_ptr<ModelFile> file) : file_(std::move(file)) {
  const std::string& label = file_->label();
  auto bad = [&](const std::string& msg) { fail(ErrorKind::invalid_file, label + ": " + msg); };
  try {
    cfg_ = parse_config_json(file_->config_json());
  } catch (const Error& e) {
    bad(std::string("bad config: ") + e.what());
  }
  arch_ = &model::architecture(cfg_.architecture);
  // Exactly the tensors of the model the config describes.
  const auto expected = arch_->expected_tensors(cfg_);
  const auto& tensors = file_->tensors();
  for (const auto& [name, shape] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) bad("missing tensor '" + name + "'");
    if (it->second.shape != shape)
      bad("tensor '" + name + "' has shape " + shape_str(it->second.shape) + ", expected " + shape_str(shape));
  }
  if (tensors.size() != expected.size()) {
    std::map<std::string, bool> want;
    for (const auto& e : expected) want[e.first] = true;
    for (const auto& [name, t] : tensors)
      if (!want.count(name)) bad("unexpected tensor '" + name + "' (not part of a " + cfg_.name + " model)");
  }
}

size_t ModelLoader::weight_bytes(Device device, DType dtype, int threads) const {
  Arena measure = Arena::measure(device);
  Context ctx;
  ctx.device = device;
  ctx.threads = threads;
  load_weights(measure, ctx, dtype);
  return measure.bytes();
}

std::unique_ptr<model::Weights> ModelLoader::load_weights(Arena& arena, const Context& ctx, DType dtype) const {
  return arch_->load_weights(*file_, cfg_, arena, ctx, dtype);
}

}  // namespace nfd
