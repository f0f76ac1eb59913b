#include "runtime/model.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <thread>

#include "backends/cpu/onednn.h"
#include "core/error.h"
#include "runtime/loader.h"
#include "runtime/snapshot.h"

namespace nfd {

int physical_cores() {
  std::ifstream f("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int phys = 0;
  while (std::getline(f, line)) {
    auto value = [&] { return std::atoi(line.substr(line.find(':') + 1).c_str()); };
    if (line.rfind("physical id", 0) == 0) phys = value();
    if (line.rfind("core id", 0) == 0) cores.insert({phys, value()});
  }
  if (!cores.empty()) return int(cores.size());
  return std::max(1, int(std::thread::hardware_concurrency() / 2));
}

std::string format_bytes(double bytes) {
  char buf[64];
  if (bytes >= double(1ull << 30))
    std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / double(1ull << 30));
  else if (bytes >= double(1ull << 20))
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / double(1ull << 20));
  else if (bytes >= 1024)
    std::snprintf(buf, sizeof(buf), "%.1f KiB", bytes / 1024.0);
  else
    std::snprintf(buf, sizeof(buf), "%.0f bytes", bytes);
  return buf;
}

void check_threads(int threads) {
  NFD_CHECK(threads >= 0 && threads <= kMaxThreads, invalid_argument,
            "threads must be between 0 (= number of physical cores) and " + std::to_string(kMaxThreads) + ", got " +
                std::to_string(threads));
}

DType default_dtype(Device device) {
  return device == Device::cpu && cpu::bf16_support().ok ? DType::bf16 : DType::f32;
}

void check_device_options(Device device, DType dtype, int threads, bool need_device) {
  if (device == Device::cuda) {
    if (need_device && !cuda_available())
      fail(ErrorKind::unsupported, "device cuda requested but CUDA is unavailable: " + cuda_unavailable_reason());
  } else if (dtype == DType::bf16) {
    // bf16 on the CPU: oneDNN's AMX or AVX512-BF16 products (backends/cpu/onednn.h).
    const cpu::Bf16Support& s = cpu::bf16_support();
    NFD_CHECK(s.ok, unsupported,
              "dtype bfloat16 on the CPU needs AVX512-BF16 or AMX: " + s.why + "; use dtype float32 (or device cuda)");
  } else {
    const char* name = dtype == DType::f16 ? "float16" : dtype_name(dtype);
    NFD_CHECK(dtype == DType::f32, unsupported,
              std::string("the CPU backend computes in float32 or bfloat16; dtype ") + name + " needs device cuda");
  }
  check_threads(threads);
}

void check_fits(Device device, size_t bytes, uint64_t limit, const std::string& what) {
  const std::string where = what + " on " + device_name(device);
  if (limit && bytes > limit)
    fail(ErrorKind::out_of_memory, where + ", more than max_memory_bytes = " + format_bytes(double(limit)));
  std::string source;
  const size_t available = available_memory(device, &source);
  if (bytes > available)
    fail(ErrorKind::out_of_memory,
         where + ", but only " + format_bytes(double(available)) + " is available (" + source + ")");
}

std::shared_ptr<Model> Model::load(const std::string& path, const ModelOptions& options) {
  check_device_options(options.device, options.dtype, options.threads, true);
  return load(ModelLoader::open(path), options);
}

std::shared_ptr<Model> Model::load(const ModelLoader& loader, const ModelOptions& options, bool fits_checked) {
  check_device_options(options.device, options.dtype, options.threads, true);
  const DeviceScope on_device(options.device);
  std::shared_ptr<Model> m(new Model());
  m->cfg_ = loader.config();
  m->opt_ = options;
  m->arch_ = &loader.architecture();
  m->fingerprint_ = snapshot::weights_fingerprint(loader.file());
  const int threads = effective_threads(options.threads);
  if (!fits_checked) {
    const size_t bytes = loader.weight_bytes(options.device, options.dtype, threads);
    check_fits(options.device, bytes, options.max_memory_bytes,
               "loading this model needs " + format_bytes(double(bytes)) + " of weights");
  }
  m->arena_ = std::make_unique<Arena>(options.device);
  Context ctx;
  ctx.device = options.device;
  ctx.threads = threads;
  void* stream = options.device == Device::cuda ? cuda_stream_create() : nullptr;
  ctx.stream = stream;
  try {
    m->weights_ = loader.load_weights(*m->arena_, ctx, options.dtype);
    device_synchronize(options.device, stream);
  } catch (...) {
    if (stream) cuda_stream_destroy(stream);
    throw;
  }
  if (stream) cuda_stream_destroy(stream);
  return m;
}

Model::~Model() {
  const DeviceScope on_device(opt_.device);  // its memory goes while its device is current
  batch_act_.reset();
  batch_arena_.reset();
  weights_.reset();
  arena_.reset();
}

model::Activations& Model::batch_activations(int batch) const {
  if (!batch_act_ || batch_act_->capacity < batch) {
    batch_act_.reset();
    batch_arena_ = std::make_unique<Arena>(opt_.device);
    batch_act_ = arch_->make_activations(cfg_, *batch_arena_, opt_.dtype, batch);
  }
  return *batch_act_;
}

}  // namespace nfd
