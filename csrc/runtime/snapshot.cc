// Session snapshots: the blob's format and checks (runtime/snapshot.h), and the session's side: which frames are
// saved (those a future frame can still see, from the served state), how they are loaded into a new session.
#include "runtime/snapshot.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/architecture.h"
#include "nfd_rt/nfd_rt_version.h"
#include "runtime/session_impl.h"

namespace nfd {
namespace snapshot {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& msg) { fail(ErrorKind::invalid_argument, "snapshot: " + msg); }

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of iSCSI, ext4 and SSE 4.2's crc32
// instruction, which computes 8 bytes a step (several GB/s, so a GiB blob is checked in a fraction of its copy
// time); the table-driven software version (slicing-by-8) is the fallback on other CPUs.
struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (int k = 1; k < 8; ++k)
      for (int i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
};

uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t load_u64(const uint8_t* p) { return uint64_t(load_u32(p)) | uint64_t(load_u32(p + 4)) << 32; }
void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
void store_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  void add_u64(uint64_t v) {
    uint8_t b[8];
    store_u64(b, v);
    add(b, 8);
  }
};

// A string from a blob, quoted in a message: control and non-ASCII bytes escaped, kept short, so messages stay
// one printable line whatever the blob holds.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char ch : s.substr(0, 40)) {
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out += char(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", ch);
      out += buf;
    }
  }
  return s.size() > 40 ? out + "..." : out;
}

// A JSON value quoted in a message, kept short.
std::string quote(const json& v) {
  std::string s = v.dump(-1, ' ', true, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// The fields where two configs differ ("window is 8 in the snapshot, 4 in this model"), nested keys dotted.
void config_diff(const json& a, const json& b, const std::string& prefix, std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto jt = b.find(it.key());
      if (jt == b.end()) out.push_back(prefix + it.key() + " is only in the snapshot's config");
      else config_diff(*it, *jt, prefix + it.key() + ".", out);
    }
    for (auto jt = b.begin(); jt != b.end(); ++jt)
      if (!a.contains(jt.key())) out.push_back(prefix + jt.key() + " is only in this model's config");
    return;
  }
  if (a != b) {
    std::string key = prefix.empty() ? "config" : prefix.substr(0, prefix.size() - 1);
    out.push_back(key + " is " + quote(a) + " in the snapshot, " + quote(b) + " in this model");
  }
}

const json& field(const json& meta, const char* key) {
  auto it = meta.find(key);
  if (it == meta.end()) bad(std::string("metadata has no field '") + key + "'");
  return *it;
}
uint64_t unsigned_field(const json& meta, const char* key) {
  const json& v = field(meta, key);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    bad(std::string("metadata field '") + key + "' must be an integer >= 0, got " + quote(v));
  return v.get<uint64_t>();
}
std::string string_field(const json& meta, const char* key) {
  const json& v = field(meta, key);
  if (!v.is_string()) bad(std::string("metadata field '") + key + "' must be a string, got " + quote(v));
  return v.get<std::string>();
}

}  // namespace

uint32_t crc32c_software(const void* data, size_t size, uint32_t crc) {
  static const CrcTables T;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (; size >= 8; p += 8, size -= 8) {  // slicing-by-8: eight table lookups per 8 bytes
    const uint32_t lo = load_u32(p) ^ crc, hi = load_u32(p + 4);
    crc = T.t[7][lo & 0xff] ^ T.t[6][(lo >> 8) & 0xff] ^ T.t[5][(lo >> 16) & 0xff] ^ T.t[4][lo >> 24] ^
          T.t[3][hi & 0xff] ^ T.t[2][(hi >> 8) & 0xff] ^ T.t[1][(hi >> 16) & 0xff] ^ T.t[0][hi >> 24];
  }
  for (; size; ++p, --size) crc = T.t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace {
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const void* data, size_t size, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  for (; size >= 8; p += 8, size -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // little-endian, as the instruction reads it
    c = __builtin_ia32_crc32di(c, v);
  }
  for (; size; ++p, --size) c = __builtin_ia32_crc32qi(uint32_t(c), *p);
  return ~uint32_t(c);
}
}  // namespace
#endif

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32c_sse42(data, size, crc);
#endif
  return crc32c_software(data, size, crc);
}

uint64_t weights_fingerprint(const ModelFile& file) {
  constexpr size_t kChunks = 64, kChunk = 64;
  Fnv f;
  for (const auto& [name, t] : file.tensors()) {  // a std::map: name order
    f.add(name.data(), name.size() + 1);
    f.add_u64(t.shape.size());
    for (int64_t d : t.shape) f.add_u64(uint64_t(d));
    const size_t n = size_t(t.end - t.begin);
    const uint8_t* p = static_cast<const uint8_t*>(t.data);
    if (n <= kChunks * kChunk) {
      f.add(p, n);
      continue;
    }
    for (size_t i = 0; i < kChunks; ++i) f.add(p + i * (n - kChunk) / (kChunks - 1), kChunk);
  }
  return f.h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)v);
  return buf;
}

const char* dtype_user_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    default: return dtype_name(t);
  }
}

Blob open(const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  if (size == 0 || !p) bad("empty (0 bytes): not an nfd_rt snapshot");
  const size_t magic_seen = std::min(size, sizeof(kMagic));
  if (std::memcmp(p, kMagic, magic_seen) != 0)
    bad("not an nfd_rt snapshot (it does not start with the bytes \"nfdsnap\\0\")");
  if (size < kHeaderBytes)
    bad("truncated: " + std::to_string(size) + " bytes, shorter than the " + std::to_string(kHeaderBytes) +
        "-byte header");
  const uint32_t version = load_u32(p + 8);
  if (version != kVersion)
    bad("format version " + std::to_string(version) + " is not supported: nfd_rt " NFD_VERSION_STRING
        " reads version " + std::to_string(kVersion));
  const uint64_t meta_bytes = load_u32(p + 12), state_bytes = load_u64(p + 16), total = load_u64(p + 24);
  if (size < total)
    bad("truncated: expected " + std::to_string(total) + " bytes, got " + std::to_string(size));
  if (size > total)
    bad("has " + std::to_string(size) + " bytes, expected " + std::to_string(total) + " (data after its end)");
  // The parts must add up (checked without overflow) before the checksum reads them.
  if (state_bytes > total || total - state_bytes != kHeaderBytes + meta_bytes + kTrailerBytes)
    bad("corrupted: the header's sizes do not add up (metadata " + std::to_string(meta_bytes) + " + state " +
        std::to_string(state_bytes) + " bytes in a blob of " + std::to_string(total) + ")");
  const uint32_t stored = load_u32(p + size - kTrailerBytes), actual = crc32c(p, size - kTrailerBytes);
  if (stored != actual) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "corrupted: its CRC-32C is %08x, the blob says %08x", actual, stored);
    bad(buf);
  }
  Blob b;
  b.meta.assign(reinterpret_cast<const char*>(p + kHeaderBytes), size_t(meta_bytes));
  b.state = p + kHeaderBytes + meta_bytes;
  b.state_bytes = size_t(state_bytes);
  return b;
}

Contents read(const void* data, size_t size, const Model& model, DType dtype) {
  const Blob b = open(data, size);
  json meta;
  try {
    meta = json::parse(b.meta);
  } catch (const json::exception&) {
    bad("its metadata is not valid JSON");
  }
  if (!meta.is_object()) bad("its metadata is not a JSON object");

  const Config& cfg = model.config();
  const std::string arch = string_field(meta, "architecture");
  if (arch != cfg.architecture)
    bad("it is of a model of architecture '" + printable(arch) + "', this model's is '" + cfg.architecture + "'");
  const json& saved_config = field(meta, "config");
  const json ours = json::parse(config_to_json(cfg));
  if (saved_config != ours) {
    std::vector<std::string> diffs;
    config_diff(saved_config, ours, "", diffs);
    std::string msg = "it is of another model: config differs: ";
    for (size_t i = 0; i < diffs.size() && i < 3; ++i) msg += (i ? "; " : "") + diffs[i];
    if (diffs.size() > 3) msg += "; and " + std::to_string(diffs.size() - 3) + " more";
    bad(msg);
  }
  const std::string weights = string_field(meta, "weights_fingerprint");
  if (weights != hex64(model.weights_fingerprint()))
    bad("it is of another model with the same config: weights fingerprint " + printable(weights) +
        " in the snapshot, " + hex64(model.weights_fingerprint()) + " for this model's file");
  const std::string saved_dtype = string_field(meta, "dtype");
  if (saved_dtype != dtype_user_name(dtype))
    bad("it was taken from a " + printable(saved_dtype) + " session, this session computes in " +
        dtype_user_name(dtype) + " (a snapshot restores into a session of the same dtype)");

  Contents c;
  c.seed = unsigned_field(meta, "seed");
  const uint64_t frame_index = unsigned_field(meta, "frame_index");
  if (frame_index >= (uint64_t(1) << 31) - 1) bad("frame_index " + std::to_string(frame_index) + " is out of range");
  c.frame_index = int64_t(frame_index);
  const json& frames = field(meta, "frames");
  if (!frames.is_array()) bad("metadata field 'frames' must be a list of frame indices, got " + quote(frames));
  for (const json& f : frames) {
    if (!f.is_number_integer() || f.get<int64_t>() < 0)
      bad("metadata field 'frames' holds " + quote(f) + ", not a frame index");
    const int64_t j = f.get<int64_t>();
    if (!c.frames.empty() && j <= c.frames.back()) bad("metadata field 'frames' is not increasing");
    // Only frames the next frame sees in some cache group: sinks and the kept frames of the group's window (so each
    // has its own slot in the groups that show it).
    if (j >= c.frame_index || !CacheRings(cfg.cache_policy(), 0).shown(c.frame_index, j))
      bad("frame " + std::to_string(j) + " is not visible from frame_index " + std::to_string(c.frame_index));
    c.frames.push_back(j);
  }
  if (unsigned_field(meta, "state_bytes") != b.state_bytes)
    bad("metadata field 'state_bytes' differs from the header's " + std::to_string(b.state_bytes));
  c.state = b.state;
  c.state_bytes = b.state_bytes;
  return c;
}

}  // namespace snapshot

// ---- the session's side ---------------------------------------------------------------------------------------

namespace {
std::vector<int> slot_counts(const std::vector<std::vector<int>>& slots) {
  std::vector<int> n;
  for (const auto& g : slots) n.push_back(int(g.size()));
  return n;
}

// The metadata JSON of a snapshot, padded to a multiple of 8.
std::string snapshot_meta(const Config& cfg, uint64_t fingerprint, DType dtype, uint64_t seed, int64_t frame_index,
                          const std::vector<int64_t>& frames, size_t state_bytes) {
  snapshot::json meta;
  meta["architecture"] = cfg.architecture;
  meta["config"] = snapshot::json::parse(config_to_json(cfg));
  meta["weights_fingerprint"] = snapshot::hex64(fingerprint);
  meta["dtype"] = snapshot::dtype_user_name(dtype);
  meta["seed"] = seed;
  meta["frame_index"] = frame_index;
  meta["frames"] = frames;
  meta["state_bytes"] = state_bytes;
  meta["nfd_rt_version"] = NFD_VERSION_STRING;  // informational: which runtime wrote it
  std::string m = meta.dump();
  m.append((8 - m.size() % 8) % 8, ' ');
  return m;
}
}  // namespace

// The blob of the served state. Frames generated ahead (speculation) are not saved: like fork(), the snapshot
// continues from the last frame returned. The caller holds the worker paused.
struct Session::Impl::SnapshotPlan {
  std::vector<int64_t> frames;            // every frame a cache group shows the served frame, increasing
  std::vector<std::vector<int>> slots;    // per group: the slots of those of `frames` it shows
  std::string meta;  // padded to a multiple of 8
  size_t state_bytes = 0, total = 0;
};

size_t snapshot_size_bound(const Config& cfg, const model::SessionGraph& graph, DType dtype) {
  // Per group, the most frames a frame can see besides itself: its sinks and the kept frames of its window.
  std::vector<int> counts;
  size_t frames = 0;
  for (const CacheGroup& g : cfg.cache_policy()) {
    counts.push_back(g.sinks + (g.window + g.stride - 1) / g.stride);
    frames += size_t(counts.back());
  }
  const size_t state = graph.state_bytes(counts);
  // The longest metadata: every number at its widest (frame indices are int64, the seed uint64).
  const int64_t widest = std::numeric_limits<int64_t>::min();
  const std::string meta = snapshot_meta(cfg, 0, dtype, std::numeric_limits<uint64_t>::max(), widest,
                                         std::vector<int64_t>(frames, widest), std::numeric_limits<size_t>::max());
  return snapshot::kHeaderBytes + meta.size() + state + snapshot::kTrailerBytes;
}

Session::Impl::SnapshotPlan Session::Impl::snapshot_plan() const {
  SnapshotPlan p;
  p.frames = ring.visible_frames(served_index);
  p.slots = ring.slots_of(p.frames, served_index);
  p.state_bytes = st->graph->state_bytes(slot_counts(p.slots));
  p.meta = snapshot_meta(cfg, model->weights_fingerprint(), opt.dtype, opt.seed, served_index, p.frames,
                         p.state_bytes);
  p.total = snapshot::kHeaderBytes + p.meta.size() + p.state_bytes + snapshot::kTrailerBytes;
  return p;
}

size_t Session::Impl::write_snapshot(void* out, size_t capacity) {
  std::unique_lock<std::mutex> lk = pause_worker(true);
  struct Resume {  // the worker resumes however this ends
    Impl& s;
    std::unique_lock<std::mutex>& lk;
    ~Resume() { s.resume_worker(lk); }
  } resume{*this, lk};
  const SnapshotPlan p = snapshot_plan();
  if (!out) return p.total;
  NFD_CHECK(capacity >= p.total, invalid_argument,
            "snapshot: the buffer holds " + std::to_string(capacity) + " bytes, the snapshot needs " +
                std::to_string(p.total));
  uint8_t* b = static_cast<uint8_t*>(out);
  std::memcpy(b, snapshot::kMagic, sizeof(snapshot::kMagic));
  snapshot::store_u32(b + 8, snapshot::kVersion);
  snapshot::store_u32(b + 12, uint32_t(p.meta.size()));
  snapshot::store_u64(b + 16, p.state_bytes);
  snapshot::store_u64(b + 24, p.total);
  std::memcpy(b + snapshot::kHeaderBytes, p.meta.data(), p.meta.size());
  uint8_t* state = b + snapshot::kHeaderBytes + p.meta.size();
  st->graph->save_state(ctx, p.slots, state);
  snapshot::store_u32(state + p.state_bytes, snapshot::crc32c(b, p.total - snapshot::kTrailerBytes));
  return p.total;
}

void Session::Impl::load_snapshot(const void* data, size_t size) {
  const snapshot::Contents c = snapshot::read(data, size, *model, opt.dtype);
  // This session's slots of the saved frames, per group (its rings may differ in size from the saved one's).
  const std::vector<std::vector<int>> slots = ring.slots_of(c.frames, c.frame_index);
  const size_t expected = st->graph->state_bytes(slot_counts(slots));
  NFD_CHECK(c.state_bytes == expected, invalid_argument,
            "snapshot: its state is " + std::to_string(c.state_bytes) + " bytes, " + std::to_string(expected) +
                " expected for " + std::to_string(c.frames.size()) + " saved frames of this model");
  std::unique_lock<std::mutex> lk = pause_worker(false);
  try {
    st->graph->load_state(ctx, slots, c.state);
  } catch (...) {  // a device error midway: the cache holds parts of two states, so forget every frame
    ring.clear();
    frame_index = served_index = 0;
    try {
      st->graph->reset_state(ctx);
    } catch (...) {
    }
    resume_worker(lk);
    throw;
  }
  ring.clear();
  ring.restore(c.frames, c.frame_index);
  frame_index = served_index = c.frame_index;
  opt.seed = c.seed;  // the noise of every later frame follows from (seed, frame index)
  resume_worker(lk);
}

size_t Session::snapshot_size() const {
  const DeviceScope on_device(impl_->opt.device);
  return impl_->write_snapshot(nullptr, 0);
}

size_t Session::snapshot(void* out, size_t capacity) const {
  NFD_CHECK(out != nullptr, invalid_argument, "snapshot: the output buffer is null");
  const DeviceScope on_device(impl_->opt.device);
  return impl_->write_snapshot(out, capacity);
}

std::vector<uint8_t> Session::snapshot() const {
  std::vector<uint8_t> blob(snapshot_size());
  blob.resize(snapshot(blob.data(), blob.size()));
  return blob;
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options, const void* blob, size_t size)
    : Session(std::move(model), options) {
  const DeviceScope on_device(impl_->opt.device);
  impl_->load_snapshot(blob, size);
}

Session::Session(const std::string& path, const SessionOptions& options, const void* blob, size_t size)
    : Session(path, options) {
  const DeviceScope on_device(impl_->opt.device);
  impl_->load_snapshot(blob, size);
}

}  // namespace nfd
