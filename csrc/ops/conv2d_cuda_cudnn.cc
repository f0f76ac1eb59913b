// cuDNN's convolution through cudnn-frontend (interface and layouts: ops/conv2d_cudnn.h). Host C++ only, built
// against the cudnn-frontend and cuDNN headers, not linked (the library: ops/cudnn_library.cc).
#include "ops/conv2d_cudnn.h"

#include <cudnn_frontend.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "ops/conv2d_layout.h"
#include "ops/cudnn_library.h"

namespace nfd {
namespace ops {
namespace cudnn_conv {

namespace fe = cudnn_frontend;

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN takes no plan for this problem (error says why)
  int64_t workspace = 0;
  bool plain = false;  // the convolution alone: bias and residual are the caller's
  std::string engine;  // what cuDNN chose, for kernels_used()
  double build_ms = 0;  // prepare's time (heuristics, support checks, plan build)
  std::string error;
};

namespace {

// The largest workspace a plan may ask for (ops/scratch_bound.cc counts it in a session's memory estimate).
constexpr int64_t kMaxWorkspace = int64_t(64) << 20;

// Tensor uids of the graph's inputs and outputs (the variant pack of a call).
enum Uid : int64_t { kX = 1, kW, kBias, kResidual, kY };

using Key = std::tuple<int, int, int, int, int, int, int, int, int, bool, bool>;
Key key_of(const Problem& p) {
  return Key{int(p.dtype), int(p.layout), p.Cin, p.H, p.W, p.Cout, p.k, p.stride, p.pad, p.bias, p.residual};
}

cudnn::PlanCache<Key, Plan>& plans() {
  static cudnn::PlanCache<Key, Plan> c;
  return c;
}

std::vector<int64_t> vec(const conv_layout::Strides4& st) { return {st.s[0], st.s[1], st.s[2], st.s[3]}; }

std::string check(fe::error_t e, const char* step) {
  return e.is_good() ? std::string() : std::string(step) + ": " + e.get_message();
}

Plan build(const Problem& p, bool fused, cudnnHandle_t handle) {
  Plan b;
  b.plain = !fused || (!p.bias && !p.residual);
  const fe::DataType_t io = p.dtype == DType::f16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16;
  const int64_t Ho = out_extent(p.H, p.k, p.stride, p.pad), Wo = out_extent(p.W, p.k, p.stride, p.pad);
  const int64_t Cin = p.Cin, Cout = p.Cout, k = p.k;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(
      fe::DataType_t::FLOAT);
  auto tensor = [&](const char* name, int64_t uid, std::vector<int64_t> dim, std::vector<int64_t> stride) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dim).set_stride(stride));
  };
  const bool nhwc = p.layout == Layout::nhwc;
  auto x = tensor("x", kX, {1, Cin, p.H, p.W}, vec(conv_layout::image_strides(nhwc, Cin, p.H, p.W)));
  auto w = tensor("w", kW, {Cout, Cin, k, k}, vec(conv_layout::filter_strides(nhwc, Cin, k)));
  auto y = g->conv_fprop(x, w,
                         fe::graph::Conv_fprop_attributes()
                             .set_name("conv")
                             .set_padding({p.pad, p.pad})
                             .set_stride({p.stride, p.stride})
                             .set_dilation({1, 1}));
  const std::vector<int64_t> out_dim = {1, Cout, Ho, Wo}, out_stride =
      vec(conv_layout::image_strides(nhwc, Cout, Ho, Wo));
  if (!b.plain && p.bias) {
    auto bias = tensor("bias", kBias, {1, Cout, 1, 1}, {Cout, 1, 1, 1});
    y = g->pointwise(y, bias, fe::graph::Pointwise_attributes().set_name("bias").set_mode(fe::PointwiseMode_t::ADD));
  }
  if (!b.plain && p.residual) {
    auto res = tensor("residual", kResidual, out_dim, out_stride);
    y = g->pointwise(y, res,
                     fe::graph::Pointwise_attributes().set_name("residual").set_mode(fe::PointwiseMode_t::ADD));
  }
  y->set_output(true).set_uid(kY).set_dim(out_dim).set_stride(out_stride).set_data_type(io);
  std::string err = check(g->validate(), "validate");
  if (err.empty()) err = check(g->build_operation_graph(handle), "build_operation_graph");
  if (err.empty()) err = check(g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}),
                               "create_execution_plans");
  // Engines compiled at run time (NVRTC, seconds each) are left out: a session chooses its convolutions at open,
  // and a dozen decoder shapes must not cost a minute there. Where only such an engine fuses the adds, the
  // convolution alone (precompiled) runs and ours adds them.
  if (err.empty()) g->deselect_behavior_notes({fe::BehaviorNote_t::RUNTIME_COMPILATION});
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
  std::string tag;
  if (g->get_plan_name(tag).is_good()) b.engine = tag;
  b.graph = std::move(g);
  return b;
}

}  // namespace

const Plan* prepare(const Problem& p, std::string* why) {
  if (!cudnn::available()) {
    if (why) *why = cudnn::status();
    return nullptr;
  }
  const bool nhwc = p.layout == Layout::nhwc;
  if (p.Cin < 1 || p.Cout < 1 || p.k < 1 || p.stride < 1 || p.pad < 0 || p.H + 2 * p.pad < p.k ||
      p.W + 2 * p.pad < p.k || (nhwc && p.residual)) {
    if (why) *why = "not a problem cuDNN convolution takes";
    return nullptr;
  }
  return plans().find_or_build(
      key_of(p),
      [&](cudnnHandle_t h) {
        const auto t0 = std::chrono::steady_clock::now();
        Plan b = build(p, /*fused=*/true, h);
        if (!b.graph && (p.bias || p.residual)) {  // no engine fuses the adds here: the convolution alone
          const std::string fused_error = b.error;
          b = build(p, /*fused=*/false, h);
          if (!b.graph) b.error = "fused: " + fused_error + "; alone: " + b.error;
        }
        b.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        return b;
      },
      why);
}

bool prepared(const Problem& p) { return plans().built(key_of(p)); }

bool plain(const Plan& plan) { return plan.plain; }

std::string describe(const Plan& plan) {
  char built[48];
  std::snprintf(built, sizeof built, ", plan built in %.0f ms", plan.build_ms);
  return std::string(plan.plain ? "convolution alone" : "bias and residual fused") +
         (plan.engine.empty() ? "" : ", " + plan.engine) + built;
}

size_t workspace_bytes(const Plan& plan) { return size_t(plan.workspace); }

void run(const Plan& b, const Pointers& ptr, void* workspace, cudaStream_t s) {
  std::unordered_map<int64_t, void*> pack = {{kX, const_cast<void*>(ptr.x)}, {kW, const_cast<void*>(ptr.w)},
                                             {kY, ptr.y}};
  if (!b.plain && ptr.bias) pack[kBias] = const_cast<void*>(ptr.bias);
  if (!b.plain && ptr.residual) pack[kResidual] = const_cast<void*>(ptr.residual);
  cudnn::execute(*b.graph, pack, workspace, s, "cuDNN convolution");
}

}  // namespace cudnn_conv
}  // namespace ops
}  // namespace nfd
