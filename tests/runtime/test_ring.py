"""The KV ring rule, once per language: nfd_rt.ring (Python sessions) against the C++ runtime's KvRing.

Random sequences of what sessions do to their ring (commit the next frame, rewind after a discarded speculation,
reset) must give the same write slot and the same visible slots, in frame order, in both; and the slots a frame
sees must hold exactly the frames the visibility rule names.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfd_rt import ring

_core = pytest.importorskip("nfd_rt._core")

ops = st.lists(st.one_of(st.just(("step",)), st.tuples(st.just("rewind"), st.integers(1, 6)), st.just(("reset",))),
               min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(sinks=st.integers(0, 3), window=st.integers(0, 6), extra=st.integers(0, 4), actions=ops)
def test_python_and_cpp_rings_agree(sinks, window, extra, actions):
    py = ring.KVRing(sinks, window, window + 1 + extra)
    cpp = _core.KvRing(sinks, window, extra)
    assert py.slots == cpp.slots
    frame = 0
    for action in actions:
        if action[0] == "step":
            state = py.frame_state(frame)
            assert state == tuple(cpp.frame_state(frame)), (frame, py.slot_frame, cpp.slot_frame)
            seen = sorted(f for f in py.slot_frame if f >= 0 and f != frame and ring.sees(frame, f, sinks, window))
            assert [py.slot_frame[s] for s in state[1][:-1]] == seen  # frame order, exactly the frames it sees
            py.commit(frame)
            cpp.commit(frame)
            frame += 1
        elif action[0] == "rewind":
            frame = max(0, frame - action[1])
            py.forget_from(frame)
            cpp.forget_from(frame)
        else:
            frame = 0
            py.clear()
            cpp.clear()
        assert py.slot_frame == list(cpp.slot_frame)


def test_every_visible_frame_is_cached():
    """With the C++ ring size, a frame sees every frame the rule allows: no visible frame was overwritten."""
    for sinks, window in [(0, 1), (1, 8), (2, 30), (3, 0)]:
        r = ring.KVRing(sinks, window, window + 1)
        for f in range(80):
            _, visible = r.frame_state(f)
            want = [j for j in range(f) if ring.sees(f, j, sinks, window)]
            assert [r.slot_frame[s] for s in visible[:-1]] == want
            r.commit(f)


def test_python_sessions_ring_without_the_current_frame():
    """The Python sessions keep the frame being generated beside the cache (ring = window): the slot a frame
    writes still holds a frame it sees (written after its attention), and the cache is full after sinks + window."""
    r = ring.KVRing(1, 3, 3)
    for f in range(10):
        visible = r.visible_slots(f)
        assert [r.slot_frame[s] for s in visible] == [j for j in range(f) if ring.sees(f, j, 1, 3)]
        r.commit(f)
    assert sorted(r.slot_frame) == [0, 7, 8, 9]
    assert ring.KVRing(2, 0, 0).slot_for(5) is None
