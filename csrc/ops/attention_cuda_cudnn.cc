// cuDNN's fused SDPA through cudnn-frontend (interface: ops/attention_cudnn.h; views: ops/attention_cudnn_layout.h).
//
// Host C++ only (compiled by the host compiler: nvcc took twice as long on cudnn-frontend's templates). Built against
// the cudnn-frontend and cuDNN headers, not linked: NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING makes the frontend call
// cuDNN through the library ops/cudnn_library.cc opens at first use.
#include "ops/attention_cudnn.h"

#include <cudnn_frontend.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "ops/attention_cudnn_layout.h"
#include "ops/cudnn_library.h"

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

// The largest workspace a plan may ask for (ops/scratch_bound.cc counts it in a session's memory estimate).
constexpr int64_t kMaxWorkspace = int64_t(32) << 20;

// Tensor uids of the graph's inputs and outputs (the variant pack of a call).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kSeqQ, kSeqKv };

using Key = std::tuple<int, int, int, int, int, int64_t, int>;
Key key_of(const Problem& p) { return Key{int(p.dtype), p.N, p.H, p.Hkv, p.hd, p.keys, p.splits}; }

cudnn::PlanCache<Key, Plan>& plans() {
  static cudnn::PlanCache<Key, Plan> c;
  return c;
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

bool available() { return cudnn::available(); }
std::string status() { return cudnn::status(); }

const Plan* prepare(const Problem& p, std::string* why) {
  if (!cudnn::available()) {
    if (why) *why = cudnn::status();
    return nullptr;
  }
  if (p.N < 1 || p.H < 1 || p.Hkv < 1 || p.H % p.Hkv != 0 || p.keys < 1 || p.splits < 1 || p.splits > p.keys) {
    if (why) *why = "not a problem cuDNN attention takes";
    return nullptr;
  }
  return plans().find_or_build(key_of(p), [&](cudnnHandle_t h) { return build(p, h); }, why);
}

bool prepared(const Problem& p) { return plans().built(key_of(p)); }

size_t workspace_bytes(const Plan& plan) { return size_t(plan.workspace); }

void run(const Plan& b, const Pointers& ptr, void* workspace, cudaStream_t s) {
  std::unordered_map<int64_t, void*> pack = {
      {kQ, const_cast<void*>(ptr.q_batches)},       {kK, const_cast<void*>(ptr.k)},
      {kV, const_cast<void*>(ptr.v)},               {kO, ptr.out},
      {kSeqQ, const_cast<int32_t*>(ptr.seq_len_q)}, {kSeqKv, const_cast<int32_t*>(ptr.seq_len_kv)}};
  if (b.splits) pack[kStats] = ptr.stats;
  cudnn::execute(*b.graph, pack, workspace, s, "cuDNN attention");
}

}  // namespace cudnn_sdpa
}  // namespace ops
}  // namespace nfd
