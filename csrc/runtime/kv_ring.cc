#include "runtime/kv_ring.h"

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace nfd {

KvRing::KvRing(int sink_frames, int window, int extra)
    : sinks_(sink_frames), window_(window), ring_(window + 1 + std::max(extra, 0)) {
  NFD_CHECK(sink_frames >= 0 && window >= 0, invalid_argument, "KvRing: sink_frames and window must be >= 0");
  NFD_CHECK(sinks_ + ring_ <= FrameState::kMaxSlots, unsupported,
            "sink_frames + window + 1 + frames ahead = " + std::to_string(sinks_ + ring_) + " exceeds the " +
                std::to_string(FrameState::kMaxSlots) + " cache slots a session can have");
  slot_frame_.assign(size_t(sinks_ + ring_), -1);
}

int KvRing::slot_for(int64_t f) const { return f < sinks_ ? int(f) : sinks_ + int((f - sinks_) % ring_); }

void KvRing::fill_state(int64_t g, FrameState& s) const {
  NFD_CHECK(g >= 0 && g < (int64_t(1) << 31) - 1, unsupported, "frame index overflow (2^31 frames)");
  s.frame_index = int32_t(g);
  s.write_slot = slot_for(g);
  s.num_visible = 0;
  for (const auto& p : visible_to(g)) s.visible_slots[s.num_visible++] = int32_t(p.second);
  s.visible_slots[s.num_visible++] = s.write_slot;  // the frame itself
}

std::vector<std::pair<int64_t, int>> KvRing::visible_to(int64_t g) const {
  const int write_slot = slot_for(g);
  std::vector<std::pair<int64_t, int>> seen;
  for (size_t slot = 0; slot < slot_frame_.size(); ++slot) {
    const int64_t j = slot_frame_[slot];
    if (int(slot) == write_slot || j < 0) continue;
    if (j < g && (j < sinks_ || g - j <= window_)) seen.push_back({j, int(slot)});
  }
  std::sort(seen.begin(), seen.end());
  return seen;
}

void KvRing::forget_from(int64_t first) {
  for (int64_t& f : slot_frame_)
    if (f >= first) f = -1;
}

void KvRing::clear() { std::fill(slot_frame_.begin(), slot_frame_.end(), -1); }

}  // namespace nfd
