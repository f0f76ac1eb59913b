// Session snapshots (docs/snapshots.md): the blob's format and its checks. The session side (what is saved, how
// it is loaded) is runtime/snapshot.cc; the state's bytes are the architecture's (SessionGraph::save_state).
//
// Format version 1, little-endian:
//   [0, 8)        magic "nfdsnap\0"
//   [8, 12)       u32 format version (1)
//   [12, 16)      u32 M: bytes of the metadata (JSON, padded with spaces to a multiple of 8)
//   [16, 24)      u64 P: bytes of the architecture's state
//   [24, 32)      u64 total bytes of the blob (32 + M + P + 4), so a truncated blob is named as such first
//   [32, 32 + M)  metadata: architecture, config, weights fingerprint, dtype, seed, frame_index, frames, ...
//   [.., + P)     the state: SessionGraph::save_state of the saved frames' slots, in frame order
//   last 4 bytes  u32 CRC-32C (Castagnoli) of every byte before it
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_file.h"
#include "core/tensor.h"

namespace nfd {

class Model;

namespace snapshot {

constexpr char kMagic[8] = {'n', 'f', 'd', 's', 'n', 'a', 'p', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32, kTrailerBytes = 4;

// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, as iSCSI, ext4 and SSE 4.2's crc32 instruction),
// continuing from `crc` (0 to start); the instruction where the CPU has it, else crc32c_software.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
uint32_t crc32c_software(const void* data, size_t size, uint32_t crc = 0);

// The fingerprint of a .nfd file's weights that a snapshot records, so a blob of another model with the same
// config is refused: a 64-bit FNV-1a hash of the tensor table (names, shapes) and, per tensor, of 64 chunks of 64
// bytes spread evenly over its data (all of it when it is smaller). Cheap (at most 4 KiB read per tensor, at
// load), independent of the dtype and device the weights are loaded as, and different for any two trained or
// randomly initialised models; it is not a checksum of every weight (a file edited in a few bytes between the
// samples keeps its fingerprint).
uint64_t weights_fingerprint(const ModelFile& file);
std::string hex64(uint64_t v);

// "float32", "bfloat16", "float16": the names the Python API and the metadata use.
const char* dtype_user_name(DType t);

// A blob that passed the checks of its format (magic, version, size, checksum) and whose metadata was read.
struct Blob {
  std::string meta;        // the metadata JSON
  const uint8_t* state = nullptr;
  size_t state_bytes = 0;
};
// Throws nfd::Error(invalid_argument) naming the first problem: not a snapshot, an unknown version, truncated
// (expected N bytes, got M), corrupted (checksum).
Blob open(const void* data, size_t size);

// What a session restores from a blob, checked against `model` and the session's dtype.
struct Contents {
  uint64_t seed = 0;
  int64_t frame_index = 0;        // the next frame the restored session returns
  std::vector<int64_t> frames;    // the saved frames, increasing; their state follows in this order
  const uint8_t* state = nullptr;
  size_t state_bytes = 0;
};
// open() plus the metadata's checks: a field missing or mistyped, another architecture, another config (naming
// the fields that differ), other weights, another dtype, frames the ring cannot hold. The size of the state is
// the caller's to check (it is the architecture's).
Contents read(const void* data, size_t size, const Model& model, DType dtype);

}  // namespace snapshot
}  // namespace nfd
