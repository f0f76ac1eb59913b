// cuDNN's fused SDPA through cudnn-frontend (interface: ops/attention_cudnn.h; views: ops/attention_cudnn_layout.h).
//
// Host C++ only (compiled by the host compiler: nvcc took twice as long on cudnn-frontend's templates). Built against
// the cudnn-frontend and cuDNN headers, not linked: NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING makes the frontend call
// cuDNN through `cudnn_dlhandle`, which this file opens at first use. Search order: $NFD_RT_CUDNN_LIB; the
// nvidia-cudnn-cu13 wheel beside this binary (site-packages/nvidia/cudnn/lib, seen from site-packages/nfd_rt/ and
// site-packages/nfd_rt/lib/); the loader's path (where PyTorch loaded it first, its copy).
#include "ops/attention_cudnn.h"

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "ops/attention_cudnn_layout.h"
#include "ops/vendor_library.h"

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's calls into cuDNN resolve against this handle
}  // namespace cudnn_frontend

namespace nfd {
namespace ops {
namespace cudnn_sdpa {

namespace fe = cudnn_frontend;

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN takes no plan for this problem (error says why)
  int64_t workspace = 0;
  bool splits = false;  // several key batches: Stats is an output
  std::string error;
};

namespace {

struct Library {
  bool ok = false;  // loaded, cuDNN 9 or newer
  std::string status;
  std::mutex mu;  // guards the handle; its stream is set per call: one caller at a time
  cudnnHandle_t handle = nullptr;
  std::string handle_error;
};

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
    fe::cudnn_dlhandle = o.handle;
    lib.status = "cuDNN from " + o.path;
    // The frontend makes its own CUDA runtime calls through a shared libcudart.so.13 it opens by name (ours is
    // linked statically). Where the loader would not find one, point it at the wheel beside cuDNN's
    // (site-packages/nvidia/cu13/lib) or the toolkit's, unless CUDNN_FRONTEND_CUDART_LIB_NAME says already.
    if (!std::getenv("CUDNN_FRONTEND_CUDART_LIB_NAME")) {
      Dl_info info;
      std::string cudnn_dir;
      if (dladdr(dlsym(fe::cudnn_dlhandle, "cudnnGetVersion"), &info) && info.dli_fname) {
        cudnn_dir = info.dli_fname;
        cudnn_dir = cudnn_dir.substr(0, cudnn_dir.rfind('/'));
      }
      for (const std::string& c : {std::string("libcudart.so.13"), cudnn_dir + "/../../cu13/lib/libcudart.so.13",
                                   std::string("/usr/local/cuda/lib64/libcudart.so.13")}) {
        if (void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_NOLOAD)) {  // already in the process: the frontend finds it
          dlclose(h);
          break;
        }
        if (c.find('/') != std::string::npos && dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
          setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", c.c_str(), 0);
          break;
        }
      }
    }
    try {
      const size_t version = fe::detail::get_backend_version();
      lib.status += " (version " + std::to_string(version) + ")";
      if (version < 90000) {
        lib.status += ": cuDNN 9 or newer is needed";
        return;
      }
    } catch (const std::exception& e) {  // a missing symbol or CUDA runtime: the frontend throws
      lib.status += std::string(": ") + e.what();
      return;
    }
    lib.ok = true;
  });
  return lib;
}

// The process' cuDNN handle, created at the first prepare (cudnnCreate needs a GPU; loading the library does not).
// Called with lib.mu held. It lives until the process ends (destroying it at exit races the CUDA teardown).
cudnnHandle_t handle(Library& lib, std::string* why) {
  if (!lib.handle && lib.handle_error.empty()) {
    try {
      const cudnnStatus_t st = fe::detail::create_handle(&lib.handle);
      if (st != CUDNN_STATUS_SUCCESS) {
        lib.handle = nullptr;
        lib.handle_error = "cudnnCreate failed (status " + std::to_string(int(st)) + ")";
      }
    } catch (const std::exception& e) {
      lib.handle_error = std::string("cudnnCreate: ") + e.what();
    }
  }
  if (!lib.handle && why) *why = lib.handle_error;
  return lib.handle;
}

// The largest workspace a plan may ask for (ops/scratch_bound.cc counts it in a session's memory estimate).
constexpr int64_t kMaxWorkspace = int64_t(32) << 20;

// Tensor uids of the graph's inputs and outputs (the variant pack of a call).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kSeqQ, kSeqKv };

using Key = std::tuple<int, int, int, int, int, int64_t, int>;
Key key_of(const Problem& p) { return Key{int(p.dtype), p.N, p.H, p.Hkv, p.hd, p.keys, p.splits}; }

std::mutex g_mu;
std::map<Key, Plan>& graphs() {
  static std::map<Key, Plan> m;
  return m;
}

std::shared_ptr<fe::graph::Tensor_attributes> view(fe::graph::Graph& g, const char* name, int64_t uid,
                                                   const tile::sdpa::View& v) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({v.dim[0], v.dim[1], v.dim[2], v.dim[3]})
                      .set_stride({v.stride[0], v.stride[1], v.stride[2], v.stride[3]}));
}

std::string check(fe::error_t e, const char* step) {
  return e.is_good() ? std::string() : std::string(step) + ": " + e.get_message();
}

Plan build(const Problem& p, cudnnHandle_t handle) {
  Plan b;
  b.splits = p.splits > 1;
  const int S = p.splits;
  const tile::sdpa::KeySplit split = tile::sdpa::key_split(p.keys, S);
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(p.dtype == DType::f16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = view(*g, "q", kQ, tile::sdpa::q_view(p.N, p.H, p.hd, S));
  auto k = view(*g, "k", kK, tile::sdpa::kv_view(split, p.Hkv, p.hd));
  auto v = view(*g, "v", kV, tile::sdpa::kv_view(split, p.Hkv, p.hd));
  auto lengths = [&](const char* name, int64_t uid) {
    return g->tensor(fe::graph::Tensor_attributes()
                         .set_name(name)
                         .set_uid(uid)
                         .set_dim({S, 1, 1, 1})
                         .set_stride({1, 1, 1, 1})
                         .set_data_type(fe::DataType_t::INT32));
  };
  fe::graph::SDPA_attributes attrs;
  attrs.set_name("attention")
      .set_generate_stats(S > 1)
      .set_attn_scale(float(1.0 / std::sqrt(double(p.hd))))
      .set_padding_mask(true)
      .set_seq_len_q(lengths("seq_len_q", kSeqQ))
      .set_seq_len_kv(lengths("seq_len_kv", kSeqKv));
  auto [o, stats] = g->sdpa(q, k, v, attrs);
  const tile::sdpa::View ov = tile::sdpa::o_view(p.N, p.H, p.hd, S);
  o->set_output(true)
      .set_uid(kO)
      .set_dim({ov.dim[0], ov.dim[1], ov.dim[2], ov.dim[3]})
      .set_stride({ov.stride[0], ov.stride[1], ov.stride[2], ov.stride[3]});
  if (S > 1) {
    const tile::sdpa::View sv = tile::sdpa::stats_view(p.N, p.H, S);
    stats->set_output(true)
        .set_uid(kStats)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({sv.dim[0], sv.dim[1], sv.dim[2], sv.dim[3]})
        .set_stride({sv.stride[0], sv.stride[1], sv.stride[2], sv.stride[3]});
  }
  std::string err = check(g->validate(), "validate");
  if (err.empty()) err = check(g->build_operation_graph(handle), "build_operation_graph");
  if (err.empty()) err = check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
  if (err.empty()) err = check(g->check_support(handle), "check_support");
  if (err.empty()) err = check(g->build_plans(handle), "build_plans");
  if (err.empty()) err = check(g->get_workspace_size(b.workspace), "get_workspace_size");
  if (err.empty() && b.workspace > kMaxWorkspace)  // the session's memory estimate allows this much
    err = "its plan asks for a workspace of " + std::to_string(b.workspace) + " bytes (at most " +
          std::to_string(kMaxWorkspace) + ")";
  if (!err.empty()) {
    b.error = err;
    return b;
  }
  b.graph = std::move(g);
  return b;
}

}  // namespace

bool available() { return library().ok; }
std::string status() { return library().status; }

const Plan* prepare(const Problem& p, std::string* why) {
  Library& lib = library();
  if (!lib.ok) {
    if (why) *why = lib.status;
    return nullptr;
  }
  if (p.N < 1 || p.H < 1 || p.Hkv < 1 || p.H % p.Hkv != 0 || p.keys < 1 || p.splits < 1 || p.splits > p.keys) {
    if (why) *why = "not a problem cuDNN attention takes";
    return nullptr;
  }
  const Key key = key_of(p);
  auto kept = [&](const Plan& plan) {  // std::map's elements stay where they are: the pointer lives on
    if (why) *why = plan.error;
    return plan.graph ? &plan : nullptr;
  };
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = graphs().find(key);
    if (it != graphs().end()) return kept(it->second);
  }
  Plan b;
  try {
    std::lock_guard<std::mutex> lock(lib.mu);
    std::string no_handle;
    if (cudnnHandle_t h = handle(lib, &no_handle)) b = build(p, h);
    else b.error = no_handle;
  } catch (const std::exception& e) {  // the frontend throws on a missing symbol
    b = Plan{};
    b.error = e.what();
  }
  std::lock_guard<std::mutex> lock(g_mu);
  return kept(graphs().emplace(key, std::move(b)).first->second);
}

bool prepared(const Problem& p) {
  std::lock_guard<std::mutex> lock(g_mu);
  return graphs().count(key_of(p)) > 0;
}

size_t workspace_bytes(const Plan& plan) { return size_t(plan.workspace); }

void run(const Plan& b, const Pointers& ptr, void* workspace, cudaStream_t s) {
  std::unordered_map<int64_t, void*> pack = {
      {kQ, const_cast<void*>(ptr.q_batches)},       {kK, const_cast<void*>(ptr.k)},
      {kV, const_cast<void*>(ptr.v)},               {kO, ptr.out},
      {kSeqQ, const_cast<int32_t*>(ptr.seq_len_q)}, {kSeqKv, const_cast<int32_t*>(ptr.seq_len_kv)}};
  if (b.splits) pack[kStats] = ptr.stats;
  Library& lib = library();
  std::lock_guard<std::mutex> lock(lib.mu);
  const cudnnStatus_t st = fe::detail::set_stream(lib.handle, s);
  NFD_CHECK(st == CUDNN_STATUS_SUCCESS, internal, "cuDNN attention: cudnnSetStream failed (status " +
                                                      std::to_string(int(st)) + ")");
  fe::error_t e = b.graph->execute(lib.handle, pack, workspace);
  NFD_CHECK(e.is_good(), internal, "cuDNN attention: execute failed: " + e.get_message());
}

}  // namespace cudnn_sdpa
}  // namespace ops
}  // namespace nfd
