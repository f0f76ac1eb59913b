#include "runtime/kv_ring.h"

#include <algorithm>
#include <string>
#include <utility>

#include "core/error.h"

namespace nfd {

KvRing::KvRing(int sink_frames, int window, int extra, int stride)
    : sinks_(sink_frames), window_(window), stride_(stride) {
  NFD_CHECK(sink_frames >= 0 && window >= 0, invalid_argument, "KvRing: sink_frames and window must be >= 0");
  NFD_CHECK(stride >= 1 && stride <= window + 1, invalid_argument,
            "KvRing: stride must be 1 .. window + 1, got " + std::to_string(stride));
  NFD_CHECK(stride == 1 || sink_frames == 0, invalid_argument, "KvRing: sink frames need stride 1");
  ring_ = (window + std::max(extra, 0)) / stride + 1;
  const int scratch = stride > 1 ? 1 : 0;
  NFD_CHECK(sinks_ + ring_ + scratch <= FrameState::kMaxSlots, unsupported,
            "sink_frames + window + 1 + frames ahead = " + std::to_string(sinks_ + ring_ + scratch) + " exceeds the " +
                std::to_string(FrameState::kMaxSlots) + " cache slots a session can have");
  slot_frame_.assign(size_t(sinks_ + ring_ + scratch), -1);
}

int KvRing::slot_for(int64_t f) const {
  if (!keeps(f)) return sinks_ + ring_;  // the scratch slot
  return f < sinks_ ? int(f) : sinks_ + int(((f - sinks_) / stride_) % ring_);
}

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
    if (shows(g, j)) seen.push_back({j, int(slot)});
  }
  std::sort(seen.begin(), seen.end());
  return seen;
}

void KvRing::forget_from(int64_t first) {
  for (int64_t& f : slot_frame_)
    if (f >= first) f = -1;
}

void KvRing::clear() { std::fill(slot_frame_.begin(), slot_frame_.end(), -1); }

CacheRings::CacheRings(const std::vector<CacheGroup>& groups, int extra) {
  NFD_CHECK(!groups.empty(), internal, "CacheRings: no cache group");
  for (const CacheGroup& g : groups) rings_.emplace_back(g.sinks, g.window, extra, g.stride);
}

std::vector<int> CacheRings::slots() const {
  std::vector<int> out;
  for (const KvRing& r : rings_) out.push_back(r.slots());
  return out;
}

void CacheRings::fill_states(int64_t g, FrameState* states) const {
  for (size_t i = 0; i < rings_.size(); ++i) rings_[i].fill_state(g, states[i]);
}

std::vector<int64_t> CacheRings::visible_frames(int64_t g) const {
  std::vector<int64_t> out;
  for (const KvRing& r : rings_)
    for (const auto& p : r.visible_to(g)) out.push_back(p.first);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<std::vector<int>> CacheRings::slots_of(const std::vector<int64_t>& frames, int64_t g) const {
  std::vector<std::vector<int>> out(rings_.size());
  for (size_t i = 0; i < rings_.size(); ++i)
    for (int64_t j : frames)
      if (rings_[i].shows(g, j)) out[i].push_back(rings_[i].slot_for(j));
  return out;
}

bool CacheRings::shown(int64_t g, int64_t j) const {
  for (const KvRing& r : rings_)
    if (r.shows(g, j)) return true;
  return false;
}

void CacheRings::restore(const std::vector<int64_t>& frames, int64_t g) {
  for (KvRing& r : rings_)
    for (int64_t j : frames)
      if (r.shows(g, j)) r.commit(j);
}

void CacheRings::assign(const CacheRings& other) {
  NFD_CHECK(rings_.size() == other.rings_.size(), internal, "CacheRings::assign: different models");
  for (size_t i = 0; i < rings_.size(); ++i) rings_[i].assign(other.rings_[i]);
}

}  // namespace nfd
