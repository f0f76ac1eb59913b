// The KV ring: which cache slot holds which frame, and which slots a frame sees. The one rule of the C++ runtime
// (python/nfd_rt/ring.py is the same rule in Python, for the reference, ONNX and static sessions; tests check the
// two against each other).
//
// Slots: sinks in [0, S); frame f >= S in S + (f - S) % R, where R = W + 1 + extra (the frames a speculating
// session generates ahead). A frame sees the S sinks, the W frames before it and itself; the slot it writes holds
// frame f - R, which no frame still in play sees. So every pass of frame f writes its K/V straight into the
// frame's final slot. A frame's visible slots are listed in frame order, so attention's result does not depend on
// where the ring happens to be.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "ops/ops.h"

namespace nfd {

class KvRing {
 public:
  KvRing(int sink_frames, int window, int extra);

  int slots() const { return int(slot_frame_.size()); }
  // The slot frame f is written to.
  int slot_for(int64_t f) const;
  // Frame g's FrameState: its index, its slot and the slots of the frames it sees (committed frames only), in
  // frame order, itself last.
  void fill_state(int64_t g, FrameState& s) const;
  // The committed frames frame g sees besides itself, (frame, slot) in frame order: what a snapshot taken before
  // frame g saves (no later frame sees a frame that g does not).
  std::vector<std::pair<int64_t, int>> visible_to(int64_t g) const;
  // Frame f's K/V are in its slot: record it (after success only, so a failed frame leaves no trace).
  void commit(int64_t f) { slot_frame_[size_t(slot_for(f))] = f; }
  // Forgets frames >= first (their slots become empty).
  void forget_from(int64_t first);
  void clear();
  // The frame held by each slot, -1 when empty.
  const std::vector<int64_t>& slot_frames() const { return slot_frame_; }
  void assign(const KvRing& other) { slot_frame_ = other.slot_frame_; }

 private:
  int sinks_, window_, ring_;
  std::vector<int64_t> slot_frame_;
};

}  // namespace nfd
