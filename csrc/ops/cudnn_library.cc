// Loading cuDNN for the cuDNN engines (interface: ops/cudnn_library.h). Search order: $NFD_RT_CUDNN_LIB; the
// nvidia-cudnn-cu13 wheel beside this binary (site-packages/nvidia/cudnn/lib, seen from site-packages/nfd_rt/ and
// site-packages/nfd_rt/lib/); the loader's path (where PyTorch loaded it first, its copy). No frontend header here:
// the few entry points this file calls are looked up by name, so it compiles in seconds.
#include "ops/cudnn_library.h"

#include <cudnn.h>
#include <dlfcn.h>

#include <cstdlib>

#include "core/error.h"
#include "ops/vendor_library.h"

namespace cudnn_frontend {
// cudnn-frontend (built with NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING) resolves every cuDNN call against this handle.
// Defined here, once for the engines' translation units; hidden like them (-fvisibility=hidden).
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace nfd {
namespace ops {
namespace cudnn {
namespace {

struct Library {
  bool ok = false;  // loaded, cuDNN 9 or newer
  std::string status;
  void* dl = nullptr;
  decltype(&cudnnCreate) create = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  std::mutex mu;  // guards the handle
  cudnnHandle_t handle = nullptr;
  std::string handle_error;
};

// The frontend makes its own CUDA runtime calls through a shared libcudart.so.13 it opens by name (ours is linked
// statically). Where the loader would not find one, point it at the wheel beside cuDNN's (site-packages/nvidia/
// cu13/lib) or the toolkit's, unless CUDNN_FRONTEND_CUDART_LIB_NAME says already.
void point_frontend_at_cudart(void* cudnn_dl) {
  if (std::getenv("CUDNN_FRONTEND_CUDART_LIB_NAME")) return;
  Dl_info info;
  std::string cudnn_dir;
  if (dladdr(dlsym(cudnn_dl, "cudnnGetVersion"), &info) && info.dli_fname) {
    cudnn_dir = info.dli_fname;
    cudnn_dir = cudnn_dir.substr(0, cudnn_dir.rfind('/'));
  }
  for (const std::string& c : {std::string("libcudart.so.13"), cudnn_dir + "/../../cu13/lib/libcudart.so.13",
                               std::string("/usr/local/cuda/lib64/libcudart.so.13")}) {
    if (void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_NOLOAD)) {  // already in the process: the frontend finds it
      dlclose(h);
      return;
    }
    if (c.find('/') != std::string::npos && dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
      setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", c.c_str(), 0);
      return;
    }
  }
}

Library& library() {
  static Library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    // RTLD_GLOBAL: libcudnn.so.9 opens its sub-libraries (graph, engines) itself and they resolve against it.
    const vendor::Opened o = vendor::open_library("NFD_RT_CUDNN_LIB", {"nvidia/cudnn/lib/libcudnn.so.9"},
                                                  "libcudnn.so.9", "cudnnGetVersion", RTLD_NOW | RTLD_GLOBAL);
    if (!o.handle) {
      lib.status = "cuDNN not loaded (pip install nvidia-cudnn-cu13, or set NFD_RT_CUDNN_LIB); tried " + o.tried;
      return;
    }
    lib.dl = o.handle;
    lib.status = "cuDNN from " + o.path;
    auto version = reinterpret_cast<decltype(&cudnnGetVersion)>(dlsym(o.handle, "cudnnGetVersion"));
    lib.create = reinterpret_cast<decltype(&cudnnCreate)>(dlsym(o.handle, "cudnnCreate"));
    lib.set_stream = reinterpret_cast<decltype(&cudnnSetStream)>(dlsym(o.handle, "cudnnSetStream"));
    if (!lib.create || !lib.set_stream) {
      lib.status += ": cudnnCreate or cudnnSetStream missing";
      return;
    }
    const size_t v = version();
    lib.status += " (version " + std::to_string(v) + ")";
    if (v < 90000) {
      lib.status += ": cuDNN 9 or newer is needed";
      return;
    }
    cudnn_frontend::cudnn_dlhandle = o.handle;
    point_frontend_at_cudart(o.handle);
    lib.ok = true;
  });
  return lib;
}

}  // namespace

bool available() { return library().ok; }
std::string status() { return library().status; }

Handle acquire(std::string* why) {
  Library& lib = library();
  Handle h;
  if (!lib.ok) {
    if (why) *why = lib.status;
    return h;
  }
  h.lock = std::unique_lock<std::mutex>(lib.mu);
  if (!lib.handle && lib.handle_error.empty()) {
    const cudnnStatus_t st = lib.create(&lib.handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      lib.handle = nullptr;
      lib.handle_error = "cudnnCreate failed (status " + std::to_string(int(st)) + ")";
    }
  }
  h.handle = lib.handle;
  if (!h.handle && why) *why = lib.handle_error;
  return h;
}

void set_stream(const Handle& h, cudaStream_t s, const char* who) {
  const cudnnStatus_t st = library().set_stream(h.handle, s);
  NFD_CHECK(st == CUDNN_STATUS_SUCCESS, internal,
            std::string(who) + ": cudnnSetStream failed (status " + std::to_string(int(st)) + ")");
}

}  // namespace cudnn
}  // namespace ops
}  // namespace nfd
