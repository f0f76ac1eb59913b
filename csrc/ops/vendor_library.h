// Opening the NVIDIA libraries the CUDA backend uses at run time without linking them (cuBLASLt:
// ops/linear_cuda_cublaslt.cu; cuDNN: ops/attention_cuda_cudnn.cc), so nfd_rt loads and runs (on its own kernels)
// where they are not installed. One search order for both: the variable naming the file, the pip wheel beside
// this binary, the loader's path.
#pragma once

#include <dlfcn.h>

#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

namespace nfd {
namespace ops {
namespace vendor {

// The folder of the binary holding this code (libnfd_rt.so, _core*.so, a test program).
inline std::string own_dir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&own_dir), &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    const size_t slash = p.rfind('/');
    if (slash != std::string::npos) return p.substr(0, slash);
  }
  return ".";
}

struct Opened {
  void* handle = nullptr;
  std::string path;   // what was opened
  std::string tried;  // every candidate, when none was
};

// Opens the first library that exists and exports `symbol`, trying: $env_var (when set and not empty:
// dlopen("") would return the process itself); each of `wheel_paths` (relative to site-packages) as seen from
// this binary in site-packages/nfd_rt/ and site-packages/nfd_rt/lib/; then `soname` through the loader.
inline Opened open_library(const char* env_var, std::initializer_list<const char*> wheel_paths, const char* soname,
                           const char* symbol, int flags) {
  std::vector<std::string> candidates;
  if (const char* e = std::getenv(env_var); e && *e) candidates.push_back(e);
  const std::string dir = own_dir();
  for (const char* up : {"/../", "/../../"})
    for (const char* rel : wheel_paths) candidates.push_back(dir + up + rel);
  candidates.push_back(soname);
  Opened o;
  for (const std::string& c : candidates) {
    void* h = dlopen(c.c_str(), flags);
    if (h && !dlsym(h, symbol)) {  // some other library of that name
      dlclose(h);
      h = nullptr;
    }
    if (h) {
      o.handle = h;
      o.path = c;
      return o;
    }
    o.tried += (o.tried.empty() ? "" : "; ") + c;
  }
  return o;
}

}  // namespace vendor
}  // namespace ops
}  // namespace nfd
