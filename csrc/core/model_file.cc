// The .nfd loader. Everything in the header is checked before a single tensor byte is read:
//   8-byte little-endian header length (<= kMaxHeaderBytes, inside the file), JSON object, __metadata__ with
//   nfd_format_version == "1" and a valid config, then per tensor: dtype (F32 only in version 1), shape,
//   data_offsets inside the data section, shape x dtype == byte span, 4-byte alignment; spans must not overlap.
// The config and the tensor set (name by name, shape by shape) are checked by the model's architecture
// (runtime/loader.cc).
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
  config_json_ = cfg_it->get<std::string>();  // parsed by its architecture (runtime/loader.cc)

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
  label_ = label;
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

}  // namespace nfd
