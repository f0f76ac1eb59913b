"""The KV ring rule in Python: which cache slot holds a frame, and which frames a frame sees.

The one place of the rule for the Python sessions (the PyTorch reference, the ONNX Runtime session, the static
PyTorch baseline); `csrc/runtime/kv_ring.cc` is the same rule in C++, and tests/runtime/test_ring.py checks the two
against each other.

- A frame i sees frame j when j <= i and (j is one of the `sinks` first frames or i - j <= window).
- Slots: sinks in [0, S); frame f >= S in S + (f - S) % R, for a ring of R slots. The C++ runtime keeps the frame
  being generated in the ring too (R = window + 1 + the frames a speculating session generates ahead); the
  Python sessions keep it beside the cache (R = window). R = 0: frames past the sinks are not cached.

`slot_for` and `sees` take ints or torch tensors (a traced graph computes the slot on the device).
"""

from __future__ import annotations

from typing import Any


def slot_for(frame: Any, sinks: int, ring: int) -> Any:
    """Cache slot frame `frame` is written to (int or tensor); None for an int frame that is not cached."""
    if isinstance(frame, int):
        if frame < sinks:
            return frame
        return sinks + (frame - sinks) % ring if ring > 0 else None
    import torch

    if ring <= 0:
        return frame  # only frames < sinks are cached
    return torch.where(frame < sinks, frame, sinks + (frame - sinks) % ring)


def sees(frame: Any, other: Any, sinks: int, window: int) -> Any:
    """True where frame `frame` sees frame `other` (ints, or tensors that broadcast)."""
    return (other <= frame) & ((other < sinks) | (frame - other <= window))


class KVRing:
    """The slots of one session's cache and the frame each holds."""

    def __init__(self, sinks: int, window: int, ring: int):
        if sinks < 0 or window < 0 or ring < 0:
            raise ValueError(f"sinks, window and ring must be >= 0, got {sinks}, {window}, {ring}")
        self.sinks, self.window, self.ring = sinks, window, ring
        self.slot_frame = [-1] * (sinks + ring)  # frame held by each slot, -1 when empty

    @classmethod
    def of(cls, cfg, extra: int | None = None) -> "KVRing":
        """The ring of a config: the Python sessions' (extra None: R = window) or the C++ runtime's
        (R = window + 1 + extra)."""
        ring = cfg.window if extra is None else cfg.window + 1 + extra
        return cls(cfg.sink_frames, cfg.window, ring)

    @property
    def slots(self) -> int:
        return len(self.slot_frame)

    def slot_for(self, frame: int) -> int | None:
        return slot_for(frame, self.sinks, self.ring)

    def visible_slots(self, frame: int) -> list[int]:
        """The slots of the committed frames `frame` sees (not itself), in frame order."""
        seen = sorted((f, s) for s, f in enumerate(self.slot_frame)
                      if f >= 0 and f != frame and sees(frame, f, self.sinks, self.window))
        return [s for _, s in seen]

    def frame_state(self, frame: int) -> tuple[int, list[int]]:
        """(write slot, visible slots with the frame's own slot last): the C++ FrameState of a frame."""
        slot = self.slot_for(frame)
        return slot, [s for s in self.visible_slots(frame) if s != slot] + [slot]

    def commit(self, frame: int) -> None:
        """Frame `frame`'s K/V are in its slot (no-op when the frame is not cached)."""
        slot = self.slot_for(frame)
        if slot is not None:
            self.slot_frame[slot] = frame

    def forget_from(self, first: int) -> None:
        self.slot_frame = [-1 if f >= first else f for f in self.slot_frame]

    def clear(self) -> None:
        self.slot_frame = [-1] * self.slots
