"""The Waypoint PyTorch baseline (nfd_rt.baselines.waypoint_static) computes what WaypointSession computes."""

import numpy as np
import pytest

import nfd_rt

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

from nfd_rt.reference import waypoint as wp  # noqa: E402
from nfd_rt.baselines.waypoint_static import WaypointStaticSession  # noqa: E402

TINY = nfd_rt.configs.get("waypoint-tiny")


@pytest.fixture(scope="module")
def model():
    return wp.WaypointModel(TINY, init_seed=1).requires_grad_(False)


def rollout(model, frames, **kwargs):
    torch.set_num_threads(1)
    TINY = model.cfg
    ref = wp.WaypointSession(model, seed=5)
    st = WaypointStaticSession(model, seed=5, **kwargs)
    r = np.random.default_rng(2)
    worst = 0.0
    for _ in range(frames):
        c = wp.controls(TINY, buttons=set(np.flatnonzero(r.random(TINY.n_buttons) < 0.3)),
                        mouse=r.standard_normal(2), scroll=r.integers(-1, 2))
        z_ref = ref.step_latent(c)
        f_ref = ref.decode(z_ref)
        f_st = st.step(c)
        worst = max(worst, float(np.abs(st.net.latent.numpy() - z_ref).max() / np.abs(z_ref).max()))
        assert f_st.shape == f_ref.shape and np.abs(f_st.astype(int) - f_ref).max() <= 1
    return worst, st


def test_static_session_matches_reference_past_both_windows(model):
    worst, st = rollout(model, 14)  # local window 3, global horizon 8 (every 2nd frame): both roll over
    assert worst < 1e-4 and st.frame_index == 14
    st.reset()
    ref = wp.WaypointSession(model, seed=5)
    c = np.zeros(TINY.control_dim, np.float32)
    assert np.abs(st.step(c).astype(int) - ref.step(c)).max() <= 1  # reset clears the rings and the decoder


def test_static_session_compiled_whole_frame_traces_two_graphs():
    """One fullgraph torch.compile of the whole frame: a graph for the first (decoder-priming) frame and one for
    the rest, no recompiles per frame. aot_eager traces without Inductor's codegen (minutes on this CPU); two
    layers (one local with control fusion, one global) keep the trace short."""
    import torch._dynamo.utils as du

    small = wp.WaypointModel(TINY.replace(depth=2), init_seed=2).requires_grad_(False)
    torch._dynamo.reset()
    before = du.counters["stats"]["unique_graphs"]
    worst, _ = rollout(small, 4, compile_mode="default", backend="aot_eager")
    assert worst < 1e-4
    assert du.counters["stats"]["unique_graphs"] - before == 2
    assert sum(du.counters["graph_break"].values()) == 0


def test_static_session_rejects_bad_input(model):
    st = WaypointStaticSession(model)
    with pytest.raises(ValueError, match="action"):
        st.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        WaypointStaticSession(model, dtype="int8")
