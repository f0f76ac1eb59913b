// nfd::Model: a .nfd file's weights on one device and dtype, loaded and validated once, then shared (read-only) by
// every Session made from it. Sessions hold a shared_ptr, so a model lives as long as its last session: freeing
// the caller's handle (nfd_model_free, Python's Model going away) never pulls the weights from under a session.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "backends/device.h"
#include "core/config.h"
#include "core/tensor.h"
#include "model/architecture.h"

namespace nfd {

struct ModelOptions {
  Device device = Device::cpu;
  DType dtype = DType::f32;  // f32 on CPU; f32, bf16 or f16 on CUDA
  int threads = 0;           // CPU threads for loading (and the default of its sessions); 0 = physical cores
  uint64_t max_memory_bytes = 0;  // refuse to load when the weights would need more; 0 = what is available
};

class ModelLoader;

class Model {
 public:
  // Opens, validates and uploads `path`; refuses (ErrorKind::out_of_memory) before allocating when the weights
  // do not fit.
  static std::shared_ptr<Model> load(const std::string& path, const ModelOptions& options);
  // The same from a file already opened; `fits_checked`: the caller has checked the memory (with the session's).
  static std::shared_ptr<Model> load(const ModelLoader& loader, const ModelOptions& options, bool fits_checked = false);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return cfg_; }
  const ModelOptions& options() const { return opt_; }
  Device device() const { return opt_.device; }
  DType dtype() const { return opt_.dtype; }
  const model::Architecture& architecture() const { return *arch_; }
  const model::Weights& weights() const { return *weights_; }
  size_t weight_bytes() const { return arena_->bytes(); }
  // A fingerprint of the file's weights (runtime/snapshot.h), so a snapshot of another model is refused.
  uint64_t weights_fingerprint() const { return fingerprint_; }

  // Activations of a batched pass for `batch` sessions, kept between calls (grown when a larger batch comes).
  // Callers hold batch_mutex() while they use them: one batched step of a model runs at a time.
  std::mutex& batch_mutex() const { return batch_mu_; }
  model::Activations& batch_activations(int batch) const;

 private:
  Model() = default;
  Config cfg_;
  ModelOptions opt_;
  std::unique_ptr<Arena> arena_;
  const model::Architecture* arch_ = nullptr;
  std::unique_ptr<model::Weights> weights_;
  uint64_t fingerprint_ = 0;
  mutable std::mutex batch_mu_;
  mutable std::unique_ptr<model::Activations> batch_act_;  // released before its arena
  mutable std::unique_ptr<Arena> batch_arena_;
};

// The CPU thread count that threads == 0 means: physical cores (distinct (physical id, core id) pairs in
// /proc/cpuinfo), else half the hardware threads.
int physical_cores();

// The thread count of `threads` (0: physical cores).
inline int effective_threads(int threads) { return threads > 0 ? threads : physical_cores(); }

// The message of a thread count out of range, one place for the model's and the session's checks.
void check_threads(int threads);

// threads above this are refused: a typo (threads=100000) would otherwise run a pool of that many threads.
constexpr int kMaxThreads = 1024;

// "1.2 GiB", "340.0 MiB", "512 bytes"
std::string format_bytes(double bytes);

// The dtype "auto" stands for: bf16 on a CPU that computes it (AVX512-BF16 or AMX, backends/cpu/onednn.h), else
// f32; f32 on CUDA (where bf16 is asked for by name).
DType default_dtype(Device device);

// Checks device availability (with `need_device`), the dtype for the device and the thread count.
void check_device_options(Device device, DType dtype, int threads, bool need_device);

// Refuses (ErrorKind::out_of_memory) `bytes` more on `device` when they exceed what it has available or `limit`
// (0 = none); `what` says what needs them, e.g. "opening this session needs 1.2 GiB (...)".
void check_fits(Device device, size_t bytes, uint64_t limit, const std::string& what);

}  // namespace nfd
