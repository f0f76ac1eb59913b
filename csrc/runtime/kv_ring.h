// The KV ring: which cache slot holds which frame, and which slots a frame sees. The one rule of the C++ runtime
// (python/nfd_rt/ring.py is the same rule in Python, for the reference, ONNX and static sessions; tests check the
// two against each other).
//
// One ring per cache group (core/config.h CacheGroup: window W, stride s, sinks S). The group keeps the frames j
// with j % s == 0. Slots: sinks in [0, S); a kept frame f >= S in S + ((f - S) / s) % R, where
// R = (W + extra) / s + 1 (extra: the frames a speculating session generates ahead); with s > 1 one more slot, the
// scratch slot, takes the K/V of the frames the group does not keep (their own passes read it; no other frame
// does). A frame sees the S sinks, the kept frames at most W before it and itself; the slot it writes holds a frame
// that no frame still in play sees. So every pass of frame f writes its K/V straight into the frame's final slot.
// A frame's visible slots are listed in frame order, so attention's result does not depend on where the ring
// happens to be. With one group of stride 1 (the NFD and Oasis models) this is the ring of R = W + 1 + extra slots
// after the sinks.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/config.h"
#include "ops/ops.h"

namespace nfd {

class KvRing {
 public:
  KvRing(int sink_frames, int window, int extra, int stride = 1);

  int slots() const { return int(slot_frame_.size()); }
  int stride() const { return stride_; }
  // Whether the group stores frame f's K/V for later frames.
  bool keeps(int64_t f) const { return f % stride_ == 0; }
  // Whether frame g sees kept frame j < g.
  bool shows(int64_t g, int64_t j) const { return keeps(j) && j < g && (j < sinks_ || g - j <= window_); }
  // The slot frame f is written to (the scratch slot for a frame the group does not keep).
  int slot_for(int64_t f) const;
  // Frame g's FrameState: its index, its slot and the slots of the frames it sees (committed frames only), in
  // frame order, itself last.
  void fill_state(int64_t g, FrameState& s) const;
  // The committed frames frame g sees besides itself, (frame, slot) in frame order: what a snapshot taken before
  // frame g saves (no later frame sees a frame that g does not).
  std::vector<std::pair<int64_t, int>> visible_to(int64_t g) const;
  // Frame f's K/V are in its slot: record it (after success only, so a failed frame leaves no trace). A frame the
  // group does not keep leaves no record.
  void commit(int64_t f) {
    if (keeps(f)) slot_frame_[size_t(slot_for(f))] = f;
  }
  // Forgets frames >= first (their slots become empty).
  void forget_from(int64_t first);
  void clear();
  // The frame held by each slot, -1 when empty.
  const std::vector<int64_t>& slot_frames() const { return slot_frame_; }
  void assign(const KvRing& other) { slot_frame_ = other.slot_frame_; }

 private:
  int sinks_, window_, stride_, ring_;
  std::vector<int64_t> slot_frame_;
};

// The rings of every cache group of a model (Config::cache_policy()), kept in step: a frame is committed,
// forgotten or cleared in all of them at once. A frame's FrameStates are one per group, in group order (the
// architecture reads group g's as ctx.state[g]).
class CacheRings {
 public:
  CacheRings(const std::vector<CacheGroup>& groups, int extra);

  size_t groups() const { return rings_.size(); }
  const KvRing& group(size_t g) const { return rings_[g]; }
  // Slots per group (what the architecture's session allocates).
  std::vector<int> slots() const;
  // Frame g's FrameState in each group: states[0 .. groups()).
  void fill_states(int64_t g, FrameState* states) const;
  // The committed frames frame g sees in any group besides itself, in frame order (a snapshot's frames).
  std::vector<int64_t> visible_frames(int64_t g) const;
  // Per group, the slots of those of `frames` (increasing) the group shows frame g, in frame order.
  std::vector<std::vector<int>> slots_of(const std::vector<int64_t>& frames, int64_t g) const;
  // Whether any group shows frame g the frame j < g.
  bool shown(int64_t g, int64_t j) const;
  void commit(int64_t f) {
    for (KvRing& r : rings_) r.commit(f);
  }
  // Records `frames` (increasing; their K/V already in their slots) as frame g's history: each group commits the
  // ones it shows frame g.
  void restore(const std::vector<int64_t>& frames, int64_t g);
  void forget_from(int64_t first) {
    for (KvRing& r : rings_) r.forget_from(first);
  }
  void clear() {
    for (KvRing& r : rings_) r.clear();
  }
  void assign(const CacheRings& other);

 private:
  std::vector<KvRing> rings_;
};

}  // namespace nfd
