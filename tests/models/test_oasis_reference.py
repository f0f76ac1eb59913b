"""Oasis: configs, the PyTorch reference (nfd_rt.reference.oasis) and its samplers.

The central facts (docs/oasis.md, "Cached vs recompute"):
- "cached" == "recompute" (upstream's loop) for every frame whose index is < max_frames (the window has not rolled);
- "cached-rebuild" == "recompute" at every frame; "cached" == "recompute-full" at every frame;
- past the window "cached" and "recompute" differ (a cached frame keeps the K/V it was written with).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nfd_rt
from nfd_rt import configs
from nfd_rt.configs import NFDConfig, OasisConfig, OasisVAEConfig

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

from nfd_rt.reference import OasisModel, OasisReferenceSession  # noqa: E402

TINY = configs.get("oasis-tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# -- configs ----------------------------------------------------------------------------------------------------

def test_oasis_500m_numbers():
    c = configs.get("oasis-500m")
    assert c.architecture == "oasis"
    assert (c.frame_height, c.frame_width, c.latent_channels) == (360, 640, 16)
    assert (c.latent_height, c.latent_width, c.grid, c.tokens_per_frame) == (18, 32, (9, 16), 144)
    assert (c.hidden_size, c.depth, c.num_heads, c.head_dim, c.mlp_ratio) == (1024, 16, 16, 64, 4)
    assert (c.action_dim, c.max_frames, c.window, c.norm_eps) == (25, 32, 31, 1e-6)
    assert (c.spatial_rope_dim, c.spatial_rope_max_freq, c.temporal_rope_theta) == (32, 256.0, 10000.0)
    assert c.timesteps == (999, 899, 799, 699, 599, 499, 399, 299, 199, 99)
    assert (c.noise_levels, c.context_level, c.noise_clamp, c.passes_per_frame) == (1000, 14, 20.0, 11)
    v = c.vae
    assert (v.patch_size, v.encoder_dim, v.encoder_depth, v.encoder_heads) == (20, 1024, 6, 16)
    assert (v.decoder_dim, v.decoder_depth, v.decoder_heads, v.mlp_ratio) == (1024, 12, 16, 4)
    assert (v.rope_dim, v.rope_max_freq, v.scaling_factor) == (16, 576.0, 0.07843137255)
    assert v.rope_dim == v.decoder_head_dim // 4 and v.rope_max_freq == c.latent_height * c.latent_width


def test_json_dispatch_and_roundtrip():
    for name in configs.names("oasis"):
        cfg = configs.get(name)
        d = json.loads(cfg.to_json())
        assert d["architecture"] == "oasis"
        assert configs.from_json(cfg.to_json()) == cfg and OasisConfig.from_json(cfg.to_json()) == cfg
    tiny = configs.get("tiny")
    assert "architecture" not in json.loads(tiny.to_json())  # NFD files stay as they were
    assert configs.from_json(tiny.to_json()) == tiny
    assert configs.from_dict({**tiny.to_dict(), "architecture": "nfd"}) == tiny
    with pytest.raises(ValueError, match="unknown architecture 'genie-2'"):
        configs.from_dict({**TINY.to_dict(), "architecture": "genie-2"})
    with pytest.raises(ValueError, match="unknown Oasis config fields"):
        configs.from_dict({**TINY.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown Oasis VAE config fields"):
        configs.from_dict({**TINY.to_dict(), "vae": {**TINY.vae.__dict__, "channels": 3}})
    assert configs.names() == ["tiny", "nfd-130m", "nfd-310m"]
    assert configs.names("oasis") == ["oasis-500m", "oasis-tiny"]
    assert configs.names("all") == configs.names() + configs.names("oasis") + configs.names("waypoint")
    assert isinstance(configs.get("tiny"), NFDConfig)


@pytest.mark.parametrize("changes, what", [
    (dict(num_heads=5), "hidden_size 64 is not divisible"),
    (dict(spatial_rope_dim=10), "spatial_rope_dim 10"),
    (dict(frame_height=50), "not divisible by the VAE patch size"),
    (dict(patch_size=4), "latent 6x12 is not divisible by patch_size 4"),
    (dict(timesteps=(332, 665)), "highest first"),
    (dict(timesteps=(1000, 5)), "timesteps"),
    (dict(context_level=1000), "context_level"),
    (dict(architecture="nfd"), "architecture must be 'oasis'"),
    (dict(beta_schedule="linear"), "beta_schedule"),
    (dict(vae=OasisVAEConfig(patch_size=8, encoder_dim=64, encoder_heads=4, decoder_dim=64, decoder_heads=4,
                             rope_dim=10)), "VAE rope_dim 10"),
])
def test_bad_oasis_configs(changes, what):
    with pytest.raises(ValueError, match=what):
        TINY.replace(**changes)


def test_ddim_timesteps_are_upstreams_float32_linspace():
    """Upstream: torch.linspace(-1, 999, steps + 1) (float32), each entry made a long (truncated), visited from the
    last entry down to entry 1 (entry 0, -1, means clean). Every step count 1..999."""
    for steps in range(1, 1000):
        lin = torch.linspace(-1, 999, steps + 1)
        assert configs.ddim_timesteps(steps) == tuple(lin.long().flip(0)[:-1].tolist()), steps
    lin = torch.linspace(-1, 999, 27)  # a count whose float32 linspace is not the exact one (levels 498, not 499)
    assert int(torch.full((1,), lin[13], dtype=torch.long)) == 498 == configs.ddim_timesteps(26)[13]
    assert configs.ddim_timesteps(3) == (999, 665, 332) == TINY.timesteps


def test_alphas_cumprod_follows_upstreams_recipe():
    """utils.sigmoid_beta_schedule(1000) in float64 -> float32 betas -> cumprod of 1 - beta (PyTorch CPU)."""
    T = 1000
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    v_start, v_end = torch.tensor(-3.0).sigmoid(), torch.tensor(3.0).sigmoid()
    g = (-((t * 6 - 3)).sigmoid() + v_end) / (v_end - v_start)
    g = g / g[0]
    betas = torch.clip(1 - g[1:] / g[:-1], 0, 0.999).float()
    want = torch.cumprod(1.0 - betas, dim=0).numpy()
    got = configs.sigmoid_alphas_cumprod(T)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == (1000,)
    assert 0.9996 < got[0] < 1 and got[-1] < 1e-6 and np.all(np.diff(got) < 0)


@pytest.mark.parametrize("name, dit_params", [("oasis-500m", 607_943_744), ("oasis-tiny", 330_704)])
def test_parameter_counts(name, dit_params):
    with torch.device("meta"):
        m = OasisModel(configs.get(name), init_seed=None)
    assert sum(p.numel() for p in m.dit.parameters()) == dit_params


# -- the reference model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return OasisModel(TINY, init_seed=0).eval()


def _clip(T=5, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, TINY.latent_channels, TINY.latent_height, TINY.latent_width, generator=g)
    t = torch.randint(0, 1000, (B, T), generator=g)
    a = torch.randn(B, T, TINY.action_dim, generator=g)
    return x, t, a


def test_shapes(model):
    x, t, a = _clip()
    with torch.no_grad():
        assert model.velocity(x, t, a).shape == x.shape
        frames = torch.randint(0, 256, (3, TINY.frame_height, TINY.frame_width, 3), dtype=torch.uint8)
        z = model.encode(frames)
        assert z.shape == (3, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
        out = model.decode(z)
        assert out.shape == frames.shape and out.dtype == torch.uint8


@torch.no_grad()
def test_a_later_frame_never_changes_an_earlier_one(model):
    """Temporal attention is causal: perturbing frame j (latent, level, action) leaves frames < j bit-identical."""
    x, t, a = _clip(T=6)
    base = model.velocity(x, t, a)
    for j in (1, 3, 5):
        x2, t2, a2 = x.clone(), t.clone(), a.clone()
        x2[:, j] += 1.0
        t2[:, j] = (t2[:, j] + 300) % 1000
        a2[:, j] -= 2.0
        out = model.velocity(x2, t2, a2)
        assert torch.equal(out[:, :j], base[:, :j])
        assert not torch.allclose(out[:, j], base[:, j])
    # the same for the rolling-window rule
    base = model.velocity(x, t, a, window=2)
    x2 = x.clone()
    x2[:, 4] += 1.0
    out = model.velocity(x2, t, a, window=2)
    assert torch.equal(out[:, :4], base[:, :4]) and not torch.allclose(out[:, 4], base[:, 4])


@torch.no_grad()
def test_window_rule_drops_old_frames(model):
    """With window W = 2, frame i's temporal attention skips frame i - 3. With one layer nothing else carries it
    (deeper models reach further back through earlier frames' states), so changing frame 0 changes frames 1-2
    only."""
    m1 = OasisModel(TINY.replace(depth=1), init_seed=3).eval()
    x, t, a = _clip(T=5)
    base = m1.velocity(x, t, a, window=2)
    x2 = x.clone()
    x2[:, 0] += 1.0
    out = m1.velocity(x2, t, a, window=2)
    assert torch.equal(out[:, 3:], base[:, 3:]) and not torch.allclose(out[:, 2], base[:, 2])


@torch.no_grad()
def test_temporal_rope_is_relative(model):
    """Shifting every frame's position leaves attention unchanged (why absolute positions in the cache are fine)."""
    x, t, a = _clip(T=4)
    v0 = model.velocity(x, t, a, frame_offset=0)
    v1 = model.velocity(x, t, a, frame_offset=1000)
    torch.testing.assert_close(v1, v0, rtol=0, atol=2e-5)


# -- the samplers -----------------------------------------------------------------------------------------------

def _rollout(model, sampler, frames=11, seed=3, action_seed=1, prompt=1):
    rng = np.random.default_rng(action_seed)
    prompt_frames = rng.integers(0, 256, (prompt, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)
    actions = rng.standard_normal((frames, TINY.action_dim)).astype(np.float32)
    s = OasisReferenceSession(model, seed=seed, sampler=sampler)
    s.reset(prompt_frames)
    return np.stack([s.step_latent(a) for a in actions])


@pytest.fixture(scope="module")
def rollouts(model):
    # prompt = frame 0, generated frames 1..11; max_frames 6, so frames 6.. are past the window.
    return {s: _rollout(model, s) for s in ("cached", "cached-rebuild", "recompute", "recompute-full")}


def test_cached_equals_recompute_inside_the_window(rollouts):
    n_inside = TINY.max_frames - 1  # generated frames 1 .. max_frames - 1
    np.testing.assert_allclose(rollouts["cached"][:n_inside], rollouts["recompute"][:n_inside], rtol=0, atol=2e-5)


def test_past_the_window_cached_is_the_rolling_cache_and_differs_from_upstream(rollouts):
    n_inside = TINY.max_frames - 1
    np.testing.assert_allclose(rollouts["cached"], rollouts["recompute-full"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(rollouts["cached-rebuild"], rollouts["recompute"], rtol=0, atol=2e-5)
    diff = np.abs(rollouts["cached"][n_inside:] - rollouts["recompute"][n_inside:]).max(axis=(1, 2, 3))
    assert np.all(diff > 1e-3), diff  # every frame from index max_frames on: upstream lost the oldest frame


def test_cached_session_writes_one_pass_per_frame_and_holds_the_window(model):
    s = OasisReferenceSession(model, seed=0)
    s.reset()
    for _ in range(TINY.max_frames + 3):
        s.step_latent(np.zeros(TINY.action_dim, np.float32))
    held = sorted(f for f in s.cache.slot_frame if f >= 0)
    assert held == list(range(s.frame_index - TINY.window, s.frame_index))
    assert s.cache.visible_slots(s.frame_index) == [s.cache.slot_for(f) for f in held]


def test_determinism_and_seeds(model):
    a = _rollout(model, "cached", frames=3, seed=7)
    b = _rollout(model, "cached", frames=3, seed=7)
    c = _rollout(model, "cached", frames=3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2


def test_initial_noise_is_clamped_philox(model):
    s = OasisReferenceSession(model, seed=11)
    shape = (TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    want = np.clip(nfd_rt.rng.latent_noise(11, 4, 0, shape), -TINY.noise_clamp, TINY.noise_clamp)
    np.testing.assert_array_equal(s.initial_noise(4).numpy(), want)
    tight = OasisReferenceSession(OasisModel(TINY.replace(noise_clamp=0.5)), seed=11)
    assert float(tight.initial_noise(4).abs().max()) == 0.5


def test_session_api(model, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)
    with OasisReferenceSession(model, seed=0) as s:
        s.reset(frames, actions=np.ones((2, TINY.action_dim), np.float32))
        assert s.frame_index == 2 and s.config is TINY
        img = s.step(np.zeros(TINY.action_dim))
        assert img.shape == (TINY.frame_height, TINY.frame_width, 3) and img.dtype == np.uint8
        z = s.step_latent(np.zeros(TINY.action_dim))
        assert z.shape == (TINY.latent_channels, TINY.latent_height, TINY.latent_width) and z.dtype == np.float32
        assert s.frame_index == 4
        with pytest.raises(ValueError, match="action must have shape"):
            s.step(np.zeros(3))
        with pytest.raises(ValueError, match="frames must be uint8"):
            s.reset(np.zeros((1, 10, 10, 3), np.uint8))
        s.reset(latents=np.zeros((1, *z.shape), np.float32))
        assert s.frame_index == 1
    with pytest.raises(RuntimeError, match="closed"):
        s.step(np.zeros(TINY.action_dim))
    with pytest.raises(ValueError, match="sampler"):
        OasisReferenceSession(model, sampler="magic")


def test_reset_frames_equals_reset_latents(model):
    """reset(frames) is the ViT encoder's mean times scaling_factor, then the same context as reset(latents)."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (1, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)
    with torch.no_grad():
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        z = (model.vae.encoder(images) * TINY.vae.scaling_factor).numpy()
    a, b = OasisReferenceSession(model, seed=1), OasisReferenceSession(model, seed=1)
    a.reset(frames)
    b.reset(latents=z)
    act = np.ones(TINY.action_dim, np.float32)
    np.testing.assert_array_equal(a.step_latent(act), b.step_latent(act))


def test_decode_truncates_like_upstream(model):
    """(dec + 1) / 2 clamped to [0, 1], times 255, truncated (upstream's .byte())."""
    from nfd_rt.reference.oasis import images_to_frames

    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0, 0.0039])[None, :, None, None].expand(1, 7, 1, 3)
    x = x.permute(0, 3, 1, 2)  # [1, 3, 7, 1]
    u = images_to_frames(x)[0, :, 0, 0].tolist()
    assert u == [0, 0, 127, 254, 255, 255, 127]


def test_export_roundtrip_and_session_from_file(model, tmp_path):
    path = tmp_path / "oasis-tiny.nfd"
    nfd_rt.export.save(model, path)
    table, cfg = nfd_rt.export.read_header(path)
    assert cfg == TINY and len(table) == len(model.state_dict())
    loaded = nfd_rt.export.load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    a = OasisReferenceSession(model, seed=2)
    b = OasisReferenceSession(str(path), seed=2)
    a.reset()
    b.reset()
    act = np.zeros(TINY.action_dim, np.float32)
    np.testing.assert_array_equal(a.step_latent(act), b.step_latent(act))
    with pytest.raises(ValueError, match="with_schedule rewrites an NFD"):
        nfd_rt.export.with_schedule(path, tmp_path / "x.nfd", (1.0, 0.5))


def test_bfloat16_session_runs(model):
    s = OasisReferenceSession(OasisModel(TINY, init_seed=0), seed=0, dtype="bfloat16")
    s.reset(np.zeros((1, TINY.frame_height, TINY.frame_width, 3), np.uint8))
    ref = _rollout(model, "cached", frames=1, seed=0, prompt=1)
    z = s.step_latent(np.random.default_rng(1).standard_normal((1, TINY.action_dim)).astype(np.float32)[0])
    assert np.isfinite(z).all() and z.shape == ref.shape[1:]
