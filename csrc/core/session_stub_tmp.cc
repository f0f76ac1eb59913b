// TEMPORARY (api branch only, deleted before merge): a stand-in for core/session.cc so the C ABI, the Python
// binding and their tests link and run before the real session exists. It loads the file with the real loader
// and "generates" all-zero latents and mid-grey frames.
#include <cstring>

#include "backends/device.h"
#include "core/error.h"
#include "core/model_file.h"
#include "core/session.h"

namespace nfd {

struct Session::Impl {
  std::unique_ptr<ModelFile> file;
  SessionOptions options;
  int64_t frame = 0;
};

Session::Session(const std::string& path, const SessionOptions& options) : impl_(new Impl) {
  if (options.device == Device::cuda) fail(ErrorKind::unsupported, "built without CUDA (stub session)");
  impl_->file = ModelFile::open(path);
  impl_->options = options;
}
Session::~Session() = default;
const Config& Session::config() const { return impl_->file->config(); }
const SessionOptions& Session::options() const { return impl_->options; }
int64_t Session::frame_index() const { return impl_->frame; }
size_t Session::memory_bytes() const { return 1; }
size_t Session::kv_cache_bytes() const { return 1; }
void Session::reset_frames(const uint8_t*, int count, const float*) { impl_->frame = count; }
void Session::reset_latents(const float*, int count, const float*) { impl_->frame = count; }
void Session::step(const float*, float* latent_out, uint8_t* frame_out) {
  const Config& c = config();
  if (latent_out) std::memset(latent_out, 0, sizeof(float) * c.latent_numel());
  if (frame_out) std::memset(frame_out, 128, size_t(c.frame_height) * c.frame_width * 3);
  impl_->frame++;
}
void Session::decode(const float*, uint8_t* frame_out) {
  const Config& c = config();
  std::memset(frame_out, 128, size_t(c.frame_height) * c.frame_width * 3);
}
bool cuda_available() { return false; }
const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }  // real one: core/tensor.cc

}  // namespace nfd
