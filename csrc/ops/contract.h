// The argument checks of the op contracts (ops/NAME.cc), shared so that every op words its errors alike:
// "ops::NAME: <argument> <what was expected>, got <what came>", e.g.
//   ops::linear: x must be [M, K] with K = 64, got f32[4, 9] on cpu
// Shapes, dtypes, devices and aliasing are invalid_argument (ValueError in Python); a limit of one backend
// (the CPU's fp32 / bf16, a CUDA kernel's head_dim) is `unsupported` and is checked by that backend, not here.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "ops/ops.h"

namespace nfd {
namespace ops {

// One argument of an op: its name in the messages and the tensor.
struct Arg {
  const char* name;
  const Tensor& t;
};

class Contract {
 public:
  explicit Contract(const char* op) : op_(op) {}

  [[noreturn]] void fail(ErrorKind kind, const std::string& msg) const {
    ::nfd::fail(kind, std::string("ops::") + op_ + ": " + msg);
  }
  void check(bool ok, const std::string& msg) const {
    if (!ok) fail(ErrorKind::invalid_argument, msg);
  }

  // Each tensor is defined (has memory).
  void defined(std::initializer_list<Arg> args) const {
    for (const Arg& a : args) check(a.t.defined(), std::string(a.name) + " is undefined (no data)");
  }

  // a has the shape `dims` (-1: any extent). `form` names the dimensions for the message, e.g. "M, K" gives
  // "x must be [M, K] with K = 64, got f32[4, 9] on cpu" (a name that is the number itself is not restated).
  void shape(const Arg& a, std::initializer_list<int64_t> dims, const char* form) const {
    bool ok = a.t.rank() == int(dims.size());
    size_t i = 0;
    for (int64_t d : dims) {
      ok = ok && (d < 0 || a.t.shape[i] == d);
      ++i;
    }
    if (ok) return;
    std::string with, f = form;
    size_t start = 0;
    for (int64_t d : dims) {
      const size_t end = f.find(", ", start);
      const std::string name = f.substr(start, end == std::string::npos ? std::string::npos : end - start);
      start = end == std::string::npos ? f.size() : end + 2;
      const std::string said = name + " = " + std::to_string(d);
      if (d < 0 || name == std::to_string(d) || with.find(said) != std::string::npos) continue;
      with += (with.empty() ? " with " : ", ") + said;
    }
    fail(ErrorKind::invalid_argument,
         std::string(a.name) + " must be [" + form + "]" + with + ", got " + a.t.describe());
  }

  // a has the shape of `like`.
  void same_shape(const Arg& a, const Arg& like) const {
    check(a.t.shape == like.t.shape, std::string(a.name) + " must have " + like.name + "'s shape, got " +
                                         a.t.describe() + " for " + like.name + " " + like.t.describe());
  }

  // The defined tensors of `args` are all on the first one's device, and share its dtype, one of f32, bf16 and
  // f16 (an op computes in one dtype; undefined tensors are optional arguments left out).
  void float_operands(std::initializer_list<Arg> args) const {
    const Arg& first = *args.begin();
    check(first.t.dtype == DType::f32 || first.t.dtype == DType::bf16 || first.t.dtype == DType::f16,
          std::string(first.name) + " must be f32, bf16 or f16, got " + first.t.describe());
    for (const Arg& a : args) {
      if (!a.t.defined()) continue;
      same_device(a, first);
      check(a.t.dtype == first.t.dtype, std::string(a.name) + " must have " + first.name + "'s dtype (" +
                                            dtype_name(first.t.dtype) + "), got " + a.t.describe());
    }
  }
  void same_device(const Arg& a, const Arg& like) const {
    check(a.t.device == like.t.device, std::string(a.name) + " must be on " + like.name + "'s device (" +
                                           device_name(like.t.device) + "), got " + a.t.describe());
  }
  void dtype(const Arg& a, DType want) const {
    check(a.t.dtype == want, std::string(a.name) + " must be " + dtype_name(want) + ", got " + a.t.describe());
  }

  // The memory of a and b does not overlap (an op that reads one while writing the other in another order).
  void disjoint(const Arg& a, const Arg& b) const {
    check(!overlap(a.t, b.t), std::string(a.name) + " and " + b.name + " must not overlap in memory");
  }
  // a and b are the same memory (in place) or do not overlap (an op that reads each element before writing it).
  void same_or_disjoint(const Arg& a, const Arg& b) const {
    const bool same = a.t.data == b.t.data && a.t.bytes() == b.t.bytes();
    check(same || !overlap(a.t, b.t),
          std::string(a.name) + " and " + b.name + " must be the same tensor or not overlap in memory");
  }

  // The FrameState of ctx where the host can read it: ctx.state on the CPU, ctx.host_state (null when not
  // given) on CUDA. ctx.state itself must be set: the kernels read it.
  const FrameState* frame_state(const Context& ctx, Device device) const {
    check(ctx.state != nullptr, "needs ctx.state (the FrameState), got none");
    return device == Device::cpu ? ctx.state : ctx.host_state;
  }

 private:
  static bool overlap(const Tensor& a, const Tensor& b) {
    if (!a.defined() || !b.defined() || a.device != b.device || a.bytes() == 0 || b.bytes() == 0) return false;
    const auto p = reinterpret_cast<uintptr_t>(a.data), q = reinterpret_cast<uintptr_t>(b.data);
    return p < q + b.bytes() && q < p + a.bytes();
  }
  const char* op_;
};

}  // namespace ops
}  // namespace nfd
