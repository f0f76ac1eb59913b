"""The PyTorch reference: KV-cached rollout == full block-causal forward, causality, determinism."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

import nfd_rt  # noqa: E402
from nfd_rt.reference import NFDModel, ReferenceSession  # noqa: E402
from nfd_rt.reference.model import frame_visible  # noqa: E402

from nfd_testfiles import random_actions, tiny_config  # noqa: E402


def record_passes(session):
    """Wrap the session's DiT pass to record (input, t, action, velocity) of every cache-write pass."""
    passes, forward = [], session._forward

    def recording(x, t, a, write):
        v = forward(x, t, a, write)
        passes.append((x.clone(), t, a.clone(), v.clone(), write))
        return v

    session._forward = recording
    return passes


def test_cached_rollout_equals_full_block_causal_forward(tiny_model):
    cfg = tiny_model.cfg
    assert (cfg.window, cfg.sink_frames) == (8, 1)
    T = 40
    s = ReferenceSession(tiny_model, seed=3)
    passes = record_passes(s)
    for a in random_actions(T, cfg.action_dim):
        s.step_latent(a)
    writes = [p for p in passes if p[4]]
    assert len(writes) == T and len(passes) == T * (cfg.num_steps + 1)
    x = torch.stack([p[0] for p in writes])[None]
    t = torch.tensor([[p[1] for p in writes]])
    a = torch.stack([p[2] for p in writes])[None]
    with torch.no_grad():
        full = tiny_model.velocity(x, t, a)[0]
    cached = torch.stack([p[3] for p in writes])
    err = (full - cached).abs().max().item()
    print(f"cache-vs-full max abs error over {T} frames: {err:.3g}")
    assert err <= 1e-5

    # A denoising pass of the last frame equals the full forward with that frame at its noisy input.
    x_last, t_last, _, v_last, _ = [p for p in passes if not p[4]][-1]
    x2, t2 = x.clone(), t.clone()
    x2[0, -1], t2[0, -1] = x_last, t_last
    with torch.no_grad():
        full2 = tiny_model.velocity(x2, t2, a)[0, -1]
    assert (full2 - v_last).abs().max().item() <= 1e-5


def test_window_mask_rule():
    cfg = tiny_config(window=3, sink_frames=2)
    f = torch.arange(8)
    vis = frame_visible(cfg, f, f)
    assert vis[7].tolist() == [True, True, False, False, True, True, True, True]
    assert vis[2].tolist() == [True, True, True] + [False] * 5
    assert not vis.triu(1).any()


@pytest.mark.parametrize("what", ["latent", "action"])
def test_perturbing_frame_k_leaves_earlier_frames_bit_identical(tiny_model, what):
    cfg = tiny_model.cfg
    T, k = 14, 9
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, T, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)
    t = torch.rand(1, T, generator=g)
    a = torch.randn(1, T, cfg.action_dim, generator=g)
    with torch.no_grad():
        base = tiny_model.velocity(x, t, a)
        x2, a2 = x.clone(), a.clone()
        (x2 if what == "latent" else a2)[0, k] += 1.0
        out = tiny_model.velocity(x2, t, a2)
    assert torch.equal(out[:, :k], base[:, :k])
    assert not torch.equal(out[:, k], base[:, k])


def test_same_seed_same_video_other_seed_differs(tiny_model):
    acts = random_actions(4, tiny_model.cfg.action_dim)

    def video(seed):
        with ReferenceSession(tiny_model, seed=seed) as s:
            return np.stack([s.step(a) for a in acts])

    a, b, c = video(5), video(5), video(6)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reset_with_context_frames_and_frame_index(tiny_model):
    cfg = tiny_model.cfg
    s = ReferenceSession(tiny_model, seed=0)
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    s.reset(frames, actions=random_actions(3, cfg.action_dim))
    assert s.frame_index == 3
    assert sum(f >= 0 for f in s.cache.slot_frame) == 3
    z = s.step_latent(np.zeros(cfg.action_dim))
    assert z.shape == (cfg.latent_channels, cfg.latent_height, cfg.latent_width) and z.dtype == np.float32
    assert s.frame_index == 4
    s.reset()
    assert s.frame_index == 0 and all(f < 0 for f in s.cache.slot_frame)


def test_bfloat16_session_takes_context_frames(tiny_model):
    """reset(frames) in bf16 encodes in bf16 (the frames were fed to the encoder as float32 and raised)."""
    import copy

    cfg = tiny_model.cfg
    s = ReferenceSession(copy.deepcopy(tiny_model), seed=0, dtype="bfloat16")
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    s.reset(frames, actions=random_actions(2, cfg.action_dim))
    assert s.frame_index == 2
    assert np.isfinite(s.step_latent(np.zeros(cfg.action_dim))).all()


def test_cache_holds_sinks_and_the_last_window_frames(tiny_model):
    cfg = tiny_model.cfg
    s = ReferenceSession(tiny_model, seed=0)
    for a in random_actions(20, cfg.action_dim):
        s.step_latent(a)
    assert sorted(s.cache.slot_frame) == [0] + list(range(12, 20))


def test_bad_calls_raise_value_error_and_session_stays_usable(tiny_model):
    cfg = tiny_model.cfg
    s = ReferenceSession(tiny_model, seed=0)
    good = np.zeros(cfg.action_dim, np.float32)
    with pytest.raises(ValueError, match=r"action must have shape \(8,\)"):
        s.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        s.step(np.full(cfg.action_dim, np.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        s.step(np.array([np.inf] + [0.0] * 7))
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, 64, 64, 3\]"):
        s.reset(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        s.reset(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 8\)"):
        s.reset(np.zeros((2, 64, 64, 3), np.uint8), actions=np.zeros((3, 8)))
    assert s.frame_index == 0
    frame = s.step(good)
    assert frame.shape == (64, 64, 3) and s.frame_index == 1
    # Torch tensors are accepted too.
    assert s.step(torch.zeros(cfg.action_dim)).shape == (64, 64, 3)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.step(good)


def test_velocity_shapes_and_window_longer_than_clip(tiny_model):
    cfg = tiny_model.cfg
    x = torch.randn(2, 3, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    with torch.no_grad():
        v = tiny_model.velocity(x, torch.rand(2, 3), torch.randn(2, 3, cfg.action_dim))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_vae_shapes(tiny_model):
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        z = tiny_model.encode(frames)
        out = tiny_model.decode(z)
    assert z.shape == (2, 4, 8, 8)
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
