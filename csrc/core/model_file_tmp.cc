// TEMPORARY minimal .nfd loader for the CPU-backend branch, until the api engineer's model_file.cc and
// config.cc land (delete this file at merge). Reads the whole file, light validation only.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/model_file.h"

namespace nfd {

Config parse_config_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text);
  Config c;
  c.name = j.at("name").get<std::string>();
  c.frame_height = j.at("frame_height");
  c.frame_width = j.at("frame_width");
  c.latent_channels = j.at("latent_channels");
  c.patch_size = j.at("patch_size");
  c.hidden_size = j.at("hidden_size");
  c.depth = j.at("depth");
  c.num_heads = j.at("num_heads");
  c.mlp_ratio = j.at("mlp_ratio");
  for (int i = 0; i < 3; ++i) c.rope_dims[i] = j.at("rope_dims").at(i);
  c.rope_theta = j.at("rope_theta");
  c.time_embed_dim = j.at("time_embed_dim");
  c.action_dim = j.at("action_dim");
  c.norm_eps = j.at("norm_eps");
  c.window = j.at("window");
  c.sink_frames = j.at("sink_frames");
  c.schedule = j.at("schedule").get<std::vector<float>>();
  c.context_noise = j.at("context_noise");
  const auto& v = j.at("vae");
  c.vae.channels = v.at("channels").get<std::vector<int>>();
  c.vae.num_res_blocks = v.at("num_res_blocks");
  c.vae.norm_groups = v.at("norm_groups");
  c.vae.norm_eps = v.at("norm_eps");
  return c;
}

std::unique_ptr<ModelFile> ModelFile::open(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  NFD_CHECK(f, io, path + ": cannot open");
  size_t size = size_t(f.tellg());
  f.seekg(0);
  void* buf = std::malloc(std::max<size_t>(size, 1));
  f.read(static_cast<char*>(buf), std::streamsize(size));
  std::unique_ptr<ModelFile> m(new ModelFile());
  m->mapping_ = buf;
  m->mapping_size_ = size;
  m->parse(static_cast<const uint8_t*>(buf), size, path);
  return m;
}

ModelFile::~ModelFile() { std::free(mapping_); }

void ModelFile::parse(const uint8_t* bytes, size_t size, const std::string& label) {
  NFD_CHECK(size >= 8, invalid_file, label + ": too short");
  uint64_t n;
  std::memcpy(&n, bytes, 8);
  NFD_CHECK(8 + n <= size, invalid_file, label + ": bad header length");
  nlohmann::json h = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(bytes + 8), n));
  config_ = parse_config_json(h.at("__metadata__").at("config").get<std::string>());
  const uint8_t* data = bytes + 8 + n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    TensorEntry e;
    e.name = it.key();
    NFD_CHECK(it.value().at("dtype") == "F32", invalid_file, label + ": " + e.name + " is not F32");
    e.shape = it.value().at("shape").get<std::vector<int64_t>>();
    e.begin = it.value().at("data_offsets").at(0);
    e.end = it.value().at("data_offsets").at(1);
    NFD_CHECK(e.end <= size - 8 - n, invalid_file, label + ": " + e.name + " runs past the end");
    e.data = data + e.begin;
    tensors_[e.name] = e;
  }
}

Tensor ModelFile::get(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  NFD_CHECK(it != tensors_.end(), invalid_file, "missing tensor " + name);
  NFD_CHECK(it->second.shape == shape, invalid_file, "tensor " + name + " has an unexpected shape");
  Tensor t;
  t.data = const_cast<void*>(it->second.data);
  t.shape = shape;
  return t;
}

}  // namespace nfd
