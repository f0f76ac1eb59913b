// The .nfd loader. Everything in the header is checked before a single tensor byte is read:
//   8-byte little-endian header length (<= kMaxHeaderBytes, inside the file), JSON object, __metadata__ with
//   nfd_format_version == "1" and a valid config, then per tensor: dtype (F32 only in version 1), shape,
//   data_offsets inside the data section, shape x dtype == byte span, 4-byte alignment; spans must not overlap;
//   the tensor set must equal expected_tensors(config) name by name and shape by shape.
// Every error names the file (label) and the first problem found; nothing here aborts.
#include "core/model_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace nfd {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same limit as python/nfd_rt/export.py
constexpr size_t kMaxRank = 8;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Other safetensors dtypes: recognised, but not stored by format version 1.
bool is_safetensors_dtype(const std::string& d) {
  static const char* known[] = {"F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8",
                                "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};
  for (const char* k : known)
    if (d == k) return true;
  return false;
}

// Error text quoting file bytes (the JSON parser's messages do): keep printable ASCII, escape the rest.
std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<ModelFile> ModelFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorKind::io, path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(ErrorKind::io, path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::io, path + ": not a regular file");
  }
  size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(ErrorKind::invalid_file,
         path + ": file is " + std::to_string(size) + " bytes, too short for a safetensors header length");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail(ErrorKind::io, path + ": cannot map: " + std::strerror(map_errno));

  std::unique_ptr<ModelFile> f(new ModelFile());
  f->mapping_ = map;  // unmapped by the destructor, also when parse() throws
  f->mapping_size_ = size;
  f->parse(static_cast<const uint8_t*>(map), size, path);
  return f;
}

std::unique_ptr<ModelFile> ModelFile::from_memory(const void* data, size_t size, const std::string& label) {
  if (data == nullptr && size != 0) fail(ErrorKind::invalid_argument, label + ": null buffer");
  if (reinterpret_cast<uintptr_t>(data) % alignof(float) != 0)
    fail(ErrorKind::invalid_argument, label + ": buffer is not 4-byte aligned");
  std::unique_ptr<ModelFile> f(new ModelFile());
  f->parse(static_cast<const uint8_t*>(data), size, label);
  return f;
}

ModelFile::~ModelFile() {
  if (mapping_) munmap(mapping_, mapping_size_);
}

void ModelFile::parse(const uint8_t* bytes, size_t size, const std::string& label) {
  auto bad = [&](const std::string& msg) { fail(ErrorKind::invalid_file, label + ": " + msg); };

  // 1. Header length.
  if (size < 8) bad("file is " + std::to_string(size) + " bytes, too short for a safetensors header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian, independent of the host
  // A text or other file renamed .nfd reads as an absurd length: say what the file is not, not the length.
  if (n > kMaxHeaderBytes)
    bad("not a .nfd (safetensors) file: its first 8 bytes give a header length of " + std::to_string(n) +
        ", over the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
  if (n > size - 8)
    bad("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) + "-byte file");
  const uint8_t* data = bytes + 8 + n;
  const uint64_t data_size = size - 8 - n;

  // 2. JSON object.
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + n);
  } catch (const json::exception& e) {
    bad("header is not valid JSON (" + printable(e.what()) + ")");
  }
  if (!header.is_object()) bad("header is not a JSON object");

  // 3. Metadata: format version, then the config.
  auto meta_it = header.find("__metadata__");
  if (meta_it == header.end() || !meta_it->is_object() || !meta_it->contains("nfd_format_version"))
    bad("not a .nfd file (no nfd_format_version in the safetensors metadata)");
  const json& meta = *meta_it;
  const json& version = meta["nfd_format_version"];
  if (!version.is_string() || version.get<std::string>() != std::to_string(kFormatVersion))
    bad("unknown nfd_format_version " + version.dump(-1, ' ', true, json::error_handler_t::replace) +
        "; this nfd_rt reads " + std::to_string(kFormatVersion));
  auto cfg_it = meta.find("config");
  if (cfg_it == meta.end()) bad("metadata has no config");
  if (!cfg_it->is_string()) bad("metadata entry 'config' must be a JSON string");
  try {
    config_ = parse_config_json(cfg_it->get<std::string>());
  } catch (const Error& e) {
    bad(std::string("bad config: ") + e.what());
  }

  // 4. Tensor entries (JSON objects iterate in name order, so "the first problem" is deterministic).
  std::vector<const TensorEntry*> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const json& e = it.value();
    auto tbad = [&](const std::string& msg) { bad("tensor '" + name + "' " + msg); };
    if (!e.is_object()) tbad("entry is not a JSON object");
    TensorEntry t;
    t.name = name;

    auto d = e.find("dtype");
    if (d == e.end() || !d->is_string()) tbad("has no dtype string");
    const std::string dtype = d->get<std::string>();
    if (dtype != "F32") {
      if (is_safetensors_dtype(dtype))
        tbad("has unsupported dtype " + dtype + " (format version 1 stores F32 only)");
      tbad("has unknown dtype " + json(dtype).dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace));
    }
    t.dtype = DType::f32;

    auto s = e.find("shape");
    if (s == e.end() || !s->is_array()) tbad("has no shape list");
    if (s->size() > kMaxRank) tbad("has rank " + std::to_string(s->size()) + " (at most 8)");
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& dim : *s) {
      if (!dim.is_number_integer() || (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0))
        tbad("has a shape entry that is not an integer >= 0: " + dim.dump());
      uint64_t v = dim.get<uint64_t>();
      if (v > uint64_t(INT64_MAX)) tbad("has a shape entry that is too large: " + dim.dump());
      t.shape.push_back(int64_t(v));
      overflow = overflow || __builtin_mul_overflow(numel, v, &numel);
    }
    uint64_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, uint64_t(sizeof(float)), &nbytes);
    if (overflow) tbad("has shape " + shape_str(t.shape) + " whose byte size overflows 64 bits");

    auto o = e.find("data_offsets");
    if (o == e.end() || !o->is_array() || o->size() != 2 || !(*o)[0].is_number_unsigned() ||
        !(*o)[1].is_number_unsigned())
      tbad("needs data_offsets [begin, end] of two integers >= 0");
    t.begin = (*o)[0].get<uint64_t>();
    t.end = (*o)[1].get<uint64_t>();
    if (t.begin > t.end)
      tbad("has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] with begin > end");
    if (t.end > data_size)
      tbad("has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
           "] past the end of the " + std::to_string(data_size) + "-byte data section");
    if (t.end - t.begin != nbytes)
      tbad("has shape " + shape_str(t.shape) + " (" + std::to_string(nbytes) + " bytes as F32) but data_offsets span " +
           std::to_string(t.end - t.begin) + " bytes");
    if ((8 + n + t.begin) % alignof(float) != 0) tbad("data is not 4-byte aligned in the file");
    t.data = data + t.begin;
    auto ins = tensors_.emplace(name, std::move(t));
    by_offset.push_back(&ins.first->second);
  }

  // 5. No two tensors share bytes.
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorEntry* prev = nullptr;
  for (const TensorEntry* t : by_offset) {
    if (t->begin == t->end) continue;  // empty tensors occupy no bytes
    if (prev && t->begin < prev->end)
      bad("tensors '" + prev->name + "' and '" + t->name + "' overlap (data_offsets [" + std::to_string(prev->begin) +
          ", " + std::to_string(prev->end) + "] and [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
          "])");
    prev = t;
  }

  // 6. Exactly the tensors of the model the config describes.
  auto expected = expected_tensors(config_);
  for (const auto& [name, shape] : expected) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) bad("missing tensor '" + name + "'");
    if (it->second.shape != shape)
      bad("tensor '" + name + "' has shape " + shape_str(it->second.shape) + ", expected " + shape_str(shape));
  }
  if (tensors_.size() != expected.size()) {
    std::map<std::string, bool> want;
    for (const auto& e : expected) want[e.first] = true;
    for (const auto& [name, t] : tensors_)
      if (!want.count(name)) bad("unexpected tensor '" + name + "' (not part of a " + config_.name + " model)");
  }
}

Tensor ModelFile::get(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(ErrorKind::invalid_file, "model file has no tensor '" + name + "'");
  if (it->second.shape != shape)
    fail(ErrorKind::invalid_file,
         "tensor '" + name + "' has shape " + shape_str(it->second.shape) + ", expected " + shape_str(shape));
  Tensor t;
  t.data = const_cast<void*>(it->second.data);  // read-only mapping: callers must not write through it
  t.dtype = DType::f32;
  t.device = Device::cpu;
  t.shape = shape;
  return t;
}

// ---------------------------------------------------------------------------------------------------------------
// expected_tensors: the state_dict of python/nfd_rt/reference/model.py NFDModel, in registration order.

namespace {

using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

void add_linear(Shapes& out, const std::string& p, int64_t in, int64_t outd) {
  out.push_back({p + ".weight", {outd, in}});
  out.push_back({p + ".bias", {outd}});
}
void add_conv(Shapes& out, const std::string& p, int64_t cin, int64_t cout, int64_t k) {
  out.push_back({p + ".weight", {cout, cin, k, k}});
  out.push_back({p + ".bias", {cout}});
}
void add_norm(Shapes& out, const std::string& p, int64_t c) {
  out.push_back({p + ".weight", {c}});
  out.push_back({p + ".bias", {c}});
}
void add_resblock(Shapes& out, const std::string& p, int64_t cin, int64_t cout) {
  add_norm(out, p + ".norm1", cin);
  add_conv(out, p + ".conv1", cin, cout, 3);
  add_norm(out, p + ".norm2", cout);
  add_conv(out, p + ".conv2", cout, cout, 3);
  if (cin != cout) add_conv(out, p + ".skip", cin, cout, 1);
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Config& cfg) {
  Shapes out;
  const int64_t D = cfg.hidden_size, M = int64_t(cfg.mlp_ratio) * D;
  add_linear(out, "dit.patch_embed", cfg.patch_dim(), D);
  add_linear(out, "dit.time_embed.fc1", cfg.time_embed_dim, D);
  add_linear(out, "dit.time_embed.fc2", D, D);
  add_linear(out, "dit.action_embed.fc1", cfg.action_dim, D);
  add_linear(out, "dit.action_embed.fc2", D, D);
  for (int i = 0; i < cfg.depth; ++i) {
    const std::string b = "dit.blocks." + std::to_string(i);
    add_linear(out, b + ".adaln", D, 6 * D);
    add_linear(out, b + ".qkv", D, 3 * D);
    add_linear(out, b + ".proj", D, D);
    add_linear(out, b + ".fc1", D, M);
    add_linear(out, b + ".fc2", M, D);
  }
  add_linear(out, "dit.final.adaln", D, 2 * D);
  add_linear(out, "dit.final.linear", D, cfg.patch_dim());

  const auto& ch = cfg.vae.channels;
  const int L = int(ch.size());
  // Encoder: highest resolution first; every level but the last ends with a stride-2 conv.
  add_conv(out, "vae.encoder.conv_in", 3, ch[0], 3);
  int64_t cin = ch[0];
  for (int i = 0; i < L; ++i) {
    const std::string lv = "vae.encoder.levels." + std::to_string(i);
    for (int j = 0; j < cfg.vae.num_res_blocks; ++j) {
      add_resblock(out, lv + ".blocks." + std::to_string(j), cin, ch[i]);
      cin = ch[i];
    }
    if (i < L - 1) add_conv(out, lv + ".downsample", cin, cin, 3);
  }
  add_norm(out, "vae.encoder.norm_out", ch[L - 1]);
  add_conv(out, "vae.encoder.conv_out", ch[L - 1], cfg.latent_channels, 3);
  // Decoder: lowest resolution first (levels[k] has channels ch[L-1-k]); all but the last upsample.
  add_conv(out, "vae.decoder.conv_in", cfg.latent_channels, ch[L - 1], 3);
  cin = ch[L - 1];
  for (int k = 0; k < L; ++k) {
    const int i = L - 1 - k;
    const std::string lv = "vae.decoder.levels." + std::to_string(k);
    for (int j = 0; j < cfg.vae.num_res_blocks; ++j) {
      add_resblock(out, lv + ".blocks." + std::to_string(j), cin, ch[i]);
      cin = ch[i];
    }
    if (i > 0) add_conv(out, lv + ".upsample", cin, cin, 3);
  }
  add_norm(out, "vae.decoder.norm_out", ch[0]);
  add_conv(out, "vae.decoder.conv_out", ch[0], 3, 3);
  return out;
}

}  // namespace nfd
