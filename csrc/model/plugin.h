// What the architecture plug-ins (model/<arch>/) share beyond the seam itself (model/architecture.h): the bounds and
// the common fields of their configs (model/config_fields.h), the tensor-list helpers of expected_tensors, a transformer's per-layer K/V cache, the
// adaLN-Zero normalisation of a batch of members with its pending gated residual, and the Architecture methods every
// plug-in writes alike. Written once so a plug-in holds only what is its own.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config_json.h"
#include "model/architecture.h"
#include "model/config_fields.h"
#include "model/weights.h"

namespace nfd {
namespace model {

// expected_tensors: names and shapes in state_dict order.
using TensorList = std::vector<std::pair<std::string, std::vector<int64_t>>>;
inline void add_linear(TensorList& out, const std::string& p, int64_t in, int64_t outd, bool bias = true) {
  out.push_back({p + ".weight", {outd, in}});
  if (bias) out.push_back({p + ".bias", {outd}});
}
inline void add_norm(TensorList& out, const std::string& p, int64_t c) {
  out.push_back({p + ".weight", {c}});
  out.push_back({p + ".bias", {c}});
}

// Snapshot slot I/O over per-layer K and V tensors ([slots, ...] each): for each layer l with keep(l), the K then
// the V of each of `slots`, in that order, as the session's dtype holds them, to or from host memory.
namespace kv_slots_detail {
// copy(tensor, byte offset of the slot in it, offset in the snapshot, bytes) for each slot of each kept layer.
template <typename Keep, typename Copy>
void for_each(const std::vector<Tensor>& k, const std::vector<Tensor>& v, const std::vector<int>& slots, Keep&& keep,
              Copy&& copy) {
  size_t at = 0;
  for (size_t l = 0; l < k.size(); ++l) {
    if (!keep(l)) continue;
    for (const Tensor* t : {&k[l], &v[l]}) {
      const size_t one = t->bytes() / size_t(t->shape[0]);
      for (int s : slots) {
        NFD_CHECK(s >= 0 && s < t->shape[0], internal,
                  "snapshot: slot " + std::to_string(s) + " outside the cache's " + std::to_string(t->shape[0]));
        copy(*t, size_t(s) * one, at, one);
        at += one;
      }
    }
  }
}
}  // namespace kv_slots_detail

template <typename Keep>
void save_kv_slots(const Context& ctx, const std::vector<Tensor>& k, const std::vector<Tensor>& v,
                   const std::vector<int>& slots, Keep&& keep, uint8_t* out) {
  kv_slots_detail::for_each(k, v, slots, keep, [&](const Tensor& t, size_t offset, size_t at, size_t n) {
    device_memcpy(out + at, Device::cpu, static_cast<const uint8_t*>(t.data) + offset, ctx.device, n, ctx.stream);
  });
  device_synchronize(ctx.device, ctx.stream);
}
template <typename Keep>
void load_kv_slots(const Context& ctx, std::vector<Tensor>& k, std::vector<Tensor>& v, const std::vector<int>& slots,
                   Keep&& keep, const uint8_t* in) {
  kv_slots_detail::for_each(k, v, slots, keep, [&](const Tensor& t, size_t offset, size_t at, size_t n) {
    device_memcpy(static_cast<uint8_t*>(t.data) + offset, ctx.device, in + at, Device::cpu, n, ctx.stream);
  });
  device_synchronize(ctx.device, ctx.stream);
}

// A transformer's K/V cache: per layer K and V token-major [slots, N, H, hd] (a frame's keys are one contiguous
// range; see ops::attention), counted as the arena's kv_cache.
struct LayerKV {
  std::vector<Tensor> k, v;
  size_t bytes = 0;
  LayerKV(Arena& arena, int layers, const std::vector<int64_t>& shape, DType dtype) {
    for (int l = 0; l < layers; ++l) {
      k.push_back(arena.alloc(shape, dtype, Arena::Use::kv_cache));
      v.push_back(arena.alloc(shape, dtype, Arena::Use::kv_cache));
      bytes += k.back().bytes() + v.back().bytes();
    }
  }
  // Copies another session's cache of the same model (fork).
  void copy_from(const Context& ctx, const LayerKV& other) {
    NFD_CHECK(k.size() == other.k.size(), internal, "LayerKV::copy_from: different models");
    for (size_t l = 0; l < k.size(); ++l) {
      NFD_CHECK(k[l].shape == other.k[l].shape, internal, "LayerKV::copy_from: cache shapes differ");
      ops::copy(ctx, other.k[l], k[l]);
      ops::copy(ctx, other.v[l], v[l]);
    }
  }

  // Snapshots (SessionGraph::save_state / load_state): the K/V of `slots` in every layer, K then V per layer, as
  // the session's dtype holds them, to or from host memory. slot_bytes(): one slot in all layers.
  size_t slot_bytes() const { return k.empty() ? 0 : 2 * k.size() * (k[0].bytes() / size_t(k[0].shape[0])); }
  void save_slots(const Context& ctx, const std::vector<int>& slots, uint8_t* out) const {
    save_kv_slots(ctx, k, v, slots, [](size_t) { return true; }, out);
  }
  void load_slots(const Context& ctx, const std::vector<int>& slots, const uint8_t* in) {
    load_kv_slots(ctx, k, v, slots, [](size_t) { return true; }, in);
  }
};

// The rows of member b in a member-major activation [capacity * n, width].
inline Tensor member_rows(const Tensor& t, int64_t b, int64_t n) { return view(t, b * n * t.dim(1), {n, t.dim(1)}); }

// adaLN-Zero's normalisation over a batch of members, each its own N rows of the residual stream h:
// hn = LayerNorm(h) * (1 + scale) + shift with member b's shift and scale (mod_of(b, i): its chunk i), after adding
// the branch output waiting in tmp, h += gate * tmp (gate_of(b) when `pending`: the branch GEMM (proj, fc2) ran over
// every member's rows, and its gated residual is folded into the norm that follows it,
// ops::gated_add_layernorm_modulate). ctx_of(b) is member b's context.
template <class CtxOf, class ModOf, class GateOf>
void adaln_norm(int64_t members, int64_t N, const Tensor& h, const Tensor& hn, const Tensor& tmp, bool pending,
                float eps, const CtxOf& ctx_of, const ModOf& mod_of, int shift_i, int scale_i, const GateOf& gate_of) {
  for (int64_t b = 0; b < members; ++b) {
    Tensor hb = member_rows(h, b, N), hnb = member_rows(hn, b, N);
    if (pending)
      ops::gated_add_layernorm_modulate(ctx_of(b), member_rows(tmp, b, N), gate_of(b), hb, mod_of(b, shift_i),
                                        mod_of(b, scale_i), eps, hnb);
    else
      ops::layernorm_modulate(ctx_of(b), hb, mod_of(b, shift_i), mod_of(b, scale_i), eps, hnb);
  }
}

// The Architecture methods every plug-in writes alike: its config functions, and making its weights, session graph
// (Session(cfg, weights, arena, dtype, cache_slots), slots per cache group) and activations (Act(cfg, arena, dtype, capacity)) from its
// own config type Cfg.
template <class Cfg, class W, class S, class Act, Config (*Parse)(const config_json::json&),
          std::string (*ToJson)(const Config&), TensorList (*Tensors)(const Config&)>
class PluginArchitecture : public Architecture {
 public:
  Config parse_config(const config_json::json& j) const override { return Parse(j); }
  std::string config_to_json(const Config& cfg) const override { return ToJson(cfg); }
  TensorList expected_tensors(const Config& cfg) const override { return Tensors(cfg); }
  std::unique_ptr<Weights> load_weights(const ModelFile& file, const Config& cfg, Arena& arena, const Context& ctx,
                                        DType dtype) const override {
    return std::make_unique<W>(file, cfg.arch_as<Cfg>(), arena, ctx, dtype);
  }
  std::unique_ptr<SessionGraph> make_session(const Config& cfg, const Weights& w, Arena& arena, DType dtype,
                                             const std::vector<int>& cache_slots) const override {
    return std::make_unique<S>(cfg.arch_as<Cfg>(), static_cast<const W&>(w), arena, dtype, cache_slots);
  }
  std::unique_ptr<Activations> make_activations(const Config& cfg, Arena& arena, DType dtype,
                                                int capacity) const override {
    return std::make_unique<Act>(cfg.arch_as<Cfg>(), arena, dtype, capacity);
  }

 protected:
  // The members as the plug-in's own: make(session, member) for each (its DiT's member from the seam's).
  template <class M, class Make>
  static std::vector<M> members_as(const std::vector<Member>& members, const Make& make) {
    std::vector<M> out;
    out.reserve(members.size());
    for (const Member& m : members) out.push_back(make(*static_cast<S*>(m.graph), m));
    return out;
  }
  static const S& session_of(const Member& m) { return *static_cast<const S*>(m.graph); }
};

}  // namespace model
}  // namespace nfd
