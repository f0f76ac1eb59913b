"""The strong PyTorch baseline (nfd_rt.baselines.static) computes what ReferenceSession computes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

from nfd_testfiles import tiny_config  # noqa: E402
from nfd_rt import rng  # noqa: E402
from nfd_rt.reference import NFDModel, ReferenceSession  # noqa: E402
from nfd_rt.baselines.static import StaticSession, philox_normal  # noqa: E402


@pytest.mark.parametrize("seed,frame,step,count", [(0, 0, 0, 1), (5, 7, 3, 1001), (2**63 + 11, 123456, 4, 4096),
                                                   (2**32 - 1, 2**31 + 5, 0, 37)])
def test_philox_on_device_is_the_rng_stream(seed, frame, step, count):
    a = rng.normal(seed, frame, step, count)
    b = philox_normal(seed, torch.tensor(frame), step, count, torch.device("cpu")).numpy()
    # Same uint32 words; Box-Muller in float64 then float32: equal up to a float ulp from libm differences.
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert (a == b).mean() > 0.999


def rollout(cfg, frames, compile_mode=None, backend="inductor"):
    model = NFDModel(cfg, init_seed=0)
    ref = ReferenceSession(model, seed=3)
    st = StaticSession(model, seed=3, compile_mode=compile_mode, backend=backend)
    actions = np.random.default_rng(1).standard_normal((frames, cfg.action_dim)).astype(np.float32)
    worst = 0.0
    for a in actions:
        z_ref = ref.step_latent(a)
        f_ref = ref.decode(z_ref)
        f_st = st.step(a)
        z_st = st.net.latent.numpy()
        worst = max(worst, float(np.abs(z_st - z_ref).max() / np.abs(z_ref).max()))
        # uint8 frames: rounding of values on a .5 boundary may differ by one level.
        assert np.abs(f_st.astype(int) - f_ref).max() <= 1
    assert st.frame_index == frames
    return worst, st


def test_static_session_compiled_whole_frame_traces_once_per_phase():
    """The whole frame is one fullgraph torch.compile: two graphs (cache filling, full cache), no recompiles
    per frame. aot_eager checks tracing and in-place buffer updates without Inductor's minutes of codegen; the
    Inductor and CUDA-graph build runs on the GPU (tools/gpu/run.sh, test_static_session_cuda_graphs)."""
    import torch._dynamo.utils as du

    torch.set_num_threads(1)
    torch._dynamo.reset()
    before = du.counters["stats"]["unique_graphs"]
    cfg = tiny_config(depth=2, window=2, sink_frames=1)
    worst, st = rollout(cfg, cfg.cache_frames + 4, compile_mode="default", backend="aot_eager")
    assert worst < 1e-4
    assert du.counters["stats"]["unique_graphs"] - before == 2
    assert sum(du.counters["graph_break"].values()) == 0


def test_static_session_rejects_bad_input(tiny_model):
    st = StaticSession(tiny_model)
    with pytest.raises(ValueError, match="action"):
        st.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        StaticSession(tiny_model, dtype="int8")
    with pytest.raises(TypeError):
        StaticSession(42)


@pytest.mark.cuda
@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_static_session_cuda_graphs(compile_mode):
    """On the GPU: fp32 parity with the CPU reference, eager and under torch.compile with CUDA graphs (the
    KV-cache buffers are updated in place inside the graph)."""
    cfg = tiny_config(window=2, sink_frames=1, depth=2)  # small: Inductor's compile time is GPU time here
    model = NFDModel(cfg, init_seed=0)
    ref = ReferenceSession(model, seed=3)
    # Only the full-cache frame is compiled (one graph); the filling frames run the same module eagerly.
    st = StaticSession(model, device="cuda", seed=3, compile_mode=compile_mode, compile_filling=False)
    actions = np.random.default_rng(1).standard_normal((cfg.cache_frames + 4, cfg.action_dim)).astype(np.float32)
    for a in actions:
        z_ref = ref.step_latent(a)
        st.step(a)
        z = st.net.latent.float().cpu().numpy()
        # TF32 may be on for CUDA matmuls/convs: a looser bound than the CPU's 1e-4.
        assert np.abs(z - z_ref).max() / np.abs(z_ref).max() < 2e-3
