"""The Oasis PyTorch baseline (nfd_rt.baselines.oasis_static) computes what OasisReferenceSession(sampler "cached")
computes, eagerly and as one compiled whole frame."""

from pathlib import Path

import numpy as np
import pytest

import nfd_rt

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

from nfd_rt.reference import OasisModel, OasisReferenceSession  # noqa: E402
from nfd_rt.baselines.oasis_static import OasisStaticSession  # noqa: E402

TINY = nfd_rt.configs.get("oasis-tiny")  # max_frames 6: the window rolls from frame 6 on

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    return OasisModel(TINY, init_seed=0).requires_grad_(False)


def rollout(ref, st, frames, seed=1):
    """Steps both sessions with the same random actions; the worst relative latent error. Frames within one
    uint8 level (a value on a truncation boundary may land either side)."""
    cfg = ref.cfg
    actions = np.random.default_rng(seed).standard_normal((frames, cfg.action_dim)).astype(np.float32)
    worst = 0.0
    for a in actions:
        z_ref = ref.step_latent(a)
        f_ref = ref.decode(z_ref)
        f_st = st.step(a)
        z_st = st.net.latent.numpy()
        worst = max(worst, float(np.abs(z_st - z_ref).max() / np.abs(z_ref).max()))
        assert f_st.shape == f_ref.shape and f_st.dtype == np.uint8
        assert np.abs(f_st.astype(int) - f_ref).max() <= 1
    assert st.frame_index == ref.frame_index
    return worst


def test_matches_the_cached_reference_past_the_window(model):
    ref = OasisReferenceSession(model, seed=3, sampler="cached")
    st = OasisStaticSession(model, seed=3)
    assert rollout(ref, st, 2 * TINY.max_frames + 2) < 1e-4  # the window rolls twice
    # The same video as the reference, not a copy of an earlier one: step_latent returns what step computed.
    a = np.zeros(TINY.action_dim, np.float32)
    z_ref, z_st = ref.step_latent(a), st.step_latent(a)
    assert np.abs(z_st - z_ref).max() / np.abs(z_ref).max() < 1e-4
    assert np.abs(st.decode(z_st).astype(int) - ref.decode(z_ref)).max() <= 1


def test_reset_with_latents_or_frames_then_past_the_window(model):
    ref = OasisReferenceSession(model, seed=4)
    st = OasisStaticSession(model, seed=4)
    r = np.random.default_rng(2)
    z = r.standard_normal((TINY.cache_frames + 2, TINY.latent_channels, TINY.latent_height,
                           TINY.latent_width)).astype(np.float32)  # more context than the window
    acts = r.standard_normal((len(z), TINY.action_dim)).astype(np.float32)
    rollout(ref, st, 2)  # a used cache first: reset must forget it
    for kwargs in ({"latents": z, "actions": acts}, {"latents": z[:2]}, {},
                   {"frames": r.integers(0, 256, (2, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)}):
        ref.reset(**kwargs)
        st.reset(**kwargs)
        assert st.frame_index == ref.frame_index
        assert rollout(ref, st, TINY.max_frames + 1, seed=len(kwargs)) < 1e-4


def test_compiled_whole_frame_two_graphs_no_recompiles(model):
    """One fullgraph torch.compile of the whole frame (the DDIM passes, the cache-write pass, the decode): one graph
    while the cache fills (masked), one at a full window, nothing recompiled per frame. aot_eager traces the same
    graph without Inductor's code generation (minutes on this CPU)."""
    import torch._dynamo.utils as du

    torch._dynamo.reset()
    before = du.counters["stats"]["unique_graphs"]
    ref = OasisReferenceSession(model, seed=3)
    st = OasisStaticSession(model, seed=3, compile_mode="default", backend="aot_eager")
    assert rollout(ref, st, TINY.max_frames + 6) < 1e-4  # 5 frames filling, 7 at a full window (rolled)
    assert du.counters["stats"]["unique_graphs"] - before == 2
    assert sum(du.counters["graph_break"].values()) == 0
    # A reset with a full window of context: its write passes run eagerly, the next frames reuse the full graph.
    z = np.random.default_rng(5).standard_normal((TINY.cache_frames, TINY.latent_channels, TINY.latent_height,
                                                  TINY.latent_width)).astype(np.float32)
    ref.reset(latents=z)
    st.reset(latents=z)
    assert rollout(ref, st, 3) < 1e-4
    assert du.counters["stats"]["unique_graphs"] - before == 2


def test_compile_filling_false_compiles_one_graph(model):
    import torch._dynamo.utils as du

    torch._dynamo.reset()
    before = du.counters["stats"]["unique_graphs"]
    ref = OasisReferenceSession(model, seed=6)
    st = OasisStaticSession(model, seed=6, compile_mode="default", backend="aot_eager", compile_filling=False)
    assert rollout(ref, st, TINY.max_frames + 2) < 1e-4
    assert du.counters["stats"]["unique_graphs"] - before == 1


def test_one_frame_window(model):
    """max_frames 1: no cache (each frame sees only itself); no write pass."""
    cfg = TINY.replace(max_frames=1)
    m = OasisModel(cfg, init_seed=1)
    assert rollout(OasisReferenceSession(m, seed=2), OasisStaticSession(m, seed=2), 3) < 1e-4


def test_rejects_bad_input(model):
    st = OasisStaticSession(model)
    with pytest.raises(ValueError, match="action"):
        st.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="latents"):
        st.reset(latents=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        OasisStaticSession(model, dtype="int8")
    with pytest.raises(TypeError):
        OasisStaticSession(42)
    demo = Path(nfd_rt.__file__).parent / "demo" / "gridworld.nfd"  # an NFD model
    with pytest.raises(ValueError, match="not an Oasis model"):
        OasisStaticSession(demo)
    st.close()
    with pytest.raises(ValueError, match="closed"):
        st.step(np.zeros(TINY.action_dim, np.float32))
