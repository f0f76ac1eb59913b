"""Waypoint-1.5 (architecture "waypoint"): the config, the cache rule, the PyTorch reference session against the
non-cached oracle, determinism, fork, and the streaming decoder."""

import json

import numpy as np
import pytest

import nfd_rt
from nfd_rt.configs_waypoint import TAEHVConfig, WaypointConfig

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

from nfd_rt.reference import waypoint as wp  # noqa: E402

TINY = nfd_rt.configs.get("waypoint-tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    return wp.WaypointModel(TINY, init_seed=0).requires_grad_(False)


def random_controls(count, cfg=TINY, seed=0):
    r = np.random.default_rng(seed)
    c = np.zeros((count, cfg.control_dim), np.float32)
    c[:, :2] = r.standard_normal((count, 2))
    c[:, 2:-1] = r.random((count, cfg.n_buttons)) < 0.3
    c[:, -1] = r.integers(-1, 2, count)
    return c


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_named_configs_round_trip_and_dispatch():
    assert nfd_rt.configs.names("waypoint") == ["waypoint-tiny", "waypoint-1.5-1b", "waypoint-1.5-1b-360p"]
    assert nfd_rt.configs.names() == ["tiny", "nfd-130m", "nfd-310m"]  # today's architecture unchanged
    for name in nfd_rt.configs.names("waypoint"):
        cfg = nfd_rt.configs.get(name)
        assert cfg.architecture == "waypoint" and json.loads(cfg.to_json())["architecture"] == "waypoint"
        assert WaypointConfig.from_json(cfg.to_json()) == cfg
        assert nfd_rt.configs.from_json(cfg.to_json()) == cfg
    nfd = nfd_rt.configs.get("tiny")
    assert nfd_rt.configs.from_json(nfd.to_json()) == nfd  # files without "architecture" are "nfd"
    with pytest.raises(ValueError, match="unknown architecture 'oasis2'"):
        nfd_rt.configs.from_json(json.dumps({"architecture": "oasis2"}))
    with pytest.raises(ValueError, match="unknown config 'waypoint-2'.*waypoint-tiny"):
        nfd_rt.configs.get("waypoint-2")


def test_published_config_sizes():
    big = nfd_rt.configs.get("waypoint-1.5-1b")
    assert (big.latent_height, big.latent_width, big.grid, big.tokens_per_frame) == (32, 64, (16, 32), 512)
    assert (big.output_height, big.output_width, big.frames_per_latent, big.control_dim) == (720, 1280, 4, 259)
    assert (big.head_dim, big.num_heads, big.num_kv_heads, big.num_steps) == (64, 32, 16, 4)
    assert big.global_layers == (3, 7, 11, 15, 19, 23)
    assert big.control_layers == (0, 3, 6, 9, 12, 15, 18, 21)
    assert [big.cache_slots(i) for i in (0, 3)] == [16, 16]
    small = nfd_rt.configs.get("waypoint-1.5-1b-360p")
    assert (small.grid, small.tokens_per_frame, small.output_height, small.output_width) == ((8, 16), 128, 360, 640)
    with torch.device("meta"):
        dit = wp.WaypointDiT(big)
    # The published checkpoint holds 1,860,823,096 values (FlashDreams' key table); 23 of its 24 copies of the
    # six shared 2048x2048 adaLN projections and the unused null control embedding are not ours; our output bias
    # repeats each channel's bias for the 2x2 positions of a patch (32 values upstream, 128 here).
    assert sum(p.numel() for p in dit.parameters()) == 1_860_823_096 - 23 * 6 * 2048 * 2048 - 2048 + 96


def test_config_refuses_unknown_fields_and_bad_values():
    d = TINY.to_dict()
    with pytest.raises(ValueError, match=r"unknown Waypoint config fields: \['bogus'\]"):
        WaypointConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match=r"unknown Waypoint taehv config fields: \['depth'\]"):
        WaypointConfig.from_dict({**d, "taehv": {**d["taehv"], "depth": 3}})
    with pytest.raises(ValueError, match="architecture must be 'waypoint'"):
        WaypointConfig.from_dict({**d, "architecture": "nfd"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        TINY.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="sigmas"):
        TINY.replace(sigmas=(1.0, 0.5))
    with pytest.raises(ValueError, match="global_window"):
        TINY.replace(global_window=7)
    with pytest.raises(ValueError, match="time factor"):
        TINY.replace(taehv=TAEHVConfig(time_downscale=(True, False, False)))
    with pytest.raises(ValueError, match="positive integers: depth=0"):
        TINY.replace(depth=0)


def upstream_ring(window, stride, frames):
    """world_engine's LayerKVCache bookkeeping, restated: slot = ceil(f / stride) % (window / stride); frame f
    writes its slot only when f % stride == 0, and during its own passes that slot is hidden. Returns, per frame,
    the committed frames it sees."""
    buckets = window // stride
    slot_frame = [-1] * buckets
    seen = []
    for f in range(frames):
        slot = ((f + stride - 1) // stride) % buckets
        write = f % stride == 0
        seen.append(sorted(g for s, g in enumerate(slot_frame) if g >= 0 and not (write and s == slot)))
        if write:
            slot_frame[slot] = f
    return seen


@pytest.mark.parametrize("layer", [0, 3])
def test_cache_rule_is_upstreams_ring(layer):
    big = nfd_rt.configs.get("waypoint-1.5-1b")
    window, stride = big.layer_window(layer), big.layer_stride(layer)
    expected = upstream_ring(window, stride, 400)
    cache = wp.LayerCache(big.replace(hidden_size=64, num_heads=1, num_kv_heads=1, frame_height=32,
                                      frame_width=32, output_height=32, output_width=32), layer, "cpu", torch.float32)
    for f in range(400):
        rule = [g for g in range(f) if big.sees(layer, f, g)]
        assert rule == expected[f], f
        assert [cache.slot_frame[s] for s in cache.visible_slots(f)] == rule
        if big.keeps(layer, f):
            cache.slot_frame[big.slot_for(layer, f)] = f
    # The rule in words: local layers see the 15 frames before; global layers the multiples of 8 less than
    # 128 frames back.
    assert [g for g in range(100) if big.sees(0, 40, g)] == list(range(25, 40))
    assert [g for g in range(200) if big.sees(3, 130, g)] == list(range(8, 129, 8))
    assert [g for g in range(200) if big.sees(3, 128, g)] == list(range(8, 121, 8))


# ---------------------------------------------------------------------------------------------------------------
# Reference session against the non-cached oracle


def test_cached_rollout_equals_full_recompute(model):
    """Long enough to roll the local window (3) and the global horizon (8 frames, every 2nd kept) several times."""
    ctx = np.random.default_rng(5).standard_normal((2, TINY.latent_channels, TINY.latent_height,
                                                    TINY.latent_width)).astype(np.float32)
    ctx_ctrl = random_controls(2, seed=9)
    ctrl = random_controls(20, seed=1)
    s = wp.WaypointSession(model, seed=7)
    s.reset(latents=ctx, controls=ctx_ctrl)
    cached = np.stack([s.step_latent(c) for c in ctrl])
    full = wp.full_rollout(model, ctrl, seed=7, context=ctx, context_controls=ctx_ctrl)
    assert s.frame_index == 22
    scale = np.abs(full).max()
    assert np.abs(cached - full).max() <= 2e-5 * scale


def test_later_frames_never_change_earlier_ones(model):
    r = np.random.default_rng(2)
    T = 12
    lat = torch.from_numpy(r.standard_normal((1, T + 4, TINY.latent_channels, TINY.latent_height,
                                              TINY.latent_width)).astype(np.float32))
    sig = torch.from_numpy(r.random((1, T + 4)).astype(np.float32))
    ctrl = torch.from_numpy(random_controls(T + 4, seed=3)[None])
    short = model.velocity_full(lat[:, :T], sig[:, :T], ctrl[:, :T])
    long = model.velocity_full(lat, sig, ctrl)
    assert torch.allclose(short, long[:, :T], atol=1e-5, rtol=0)
    # A frame a layer keeps and shows is read: changing frame 2 changes frame 10 (frame 2 is in a global layer's
    # view of frame 9, whose output frame 10 sees through the local layers).
    lat2 = lat.clone()
    lat2[:, 2] += 1
    assert not torch.allclose(model.velocity_full(lat2[:, :11], sig[:, :11], ctrl[:, :11])[:, 10], long[:, 10])


def test_determinism_seed_and_fork(model):
    ctrl = random_controls(6, seed=4)
    a, b, c = (wp.WaypointSession(model, seed=s) for s in (3, 3, 4))
    for x in (a, b, c):
        x.reset()
    fa = [a.step(u) for u in ctrl[:3]]
    fb = [b.step(u) for u in ctrl[:3]]
    fc = [c.step(u) for u in ctrl[:3]]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not np.array_equal(fa[-1], fc[-1])
    assert fa[0].shape == (4, TINY.output_height, TINY.output_width, 3) and fa[0].dtype == np.uint8
    twin = a.fork()
    rest_a = [a.step(u) for u in ctrl[3:]]
    rest_t = [twin.step(u) for u in ctrl[3:]]  # a's steps did not touch the fork's caches or decoder state
    assert all(np.array_equal(x, y) for x, y in zip(rest_a, rest_t))
    a.reset()
    assert a.frame_index == 0 and np.array_equal(a.step(ctrl[0]), fa[0])  # reset clears the decoder state too


def test_reset_with_frames_encodes_four_per_latent(model):
    frames = np.random.default_rng(0).integers(0, 256, (8, TINY.output_height, TINY.output_width, 3), np.uint8)
    z = model.encode(torch.from_numpy(frames))
    assert z.shape == (2, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    a, b = wp.WaypointSession(model, seed=1), wp.WaypointSession(model, seed=1)
    a.reset(frames=frames)
    b.reset(latents=z.numpy())
    assert a.frame_index == 2
    u = random_controls(1)[0]
    assert np.array_equal(a.step_latent(u), b.step_latent(u))
    with pytest.raises(ValueError, match="multiple of 4"):
        a.reset(frames=frames[:3])
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, 72, 128, 3\]"):
        a.reset(frames=np.zeros((4, 64, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="action must have shape"):
        a.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="either frames or latents"):
        a.reset(frames=frames, latents=z.numpy())


# ---------------------------------------------------------------------------------------------------------------
# The streaming decoder


def test_streaming_decoder_equals_whole_sequence(model):
    r = np.random.default_rng(8)
    lat = torch.from_numpy(r.standard_normal((6, TINY.latent_channels, TINY.latent_height,
                                              TINY.latent_width)).astype(np.float32))
    dec = model.taehv.decoder
    whole = dec(lat[None])[0]  # fresh state, no priming
    mem, parts = [None] * dec.num_memories, []
    for z in lat:
        frames, mem = dec.step(z[None], mem)
        parts.append(frames[0])
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5, rtol=0)
    # The session: one latent at a time, primed like upstream, equals decode_video of the sequence at once.
    s = wp.WaypointSession(model)
    streamed = np.concatenate([s.decode(z.numpy()) for z in lat])
    at_once = model.decode_video(lat).numpy()
    assert streamed.shape == (6 * 4, TINY.output_height, TINY.output_width, 3)
    assert np.abs(streamed.astype(int) - at_once).max() <= 1 and (streamed != at_once).mean() < 1e-3


def test_encoder_time_pooling_is_causal(model):
    """The encoder's latent t depends on frames < 4 (t + 1) only."""
    r = np.random.default_rng(1)
    frames = torch.from_numpy(r.integers(0, 256, (12, TINY.output_height, TINY.output_width, 3), np.uint8))
    z = model.encode(frames)
    changed = frames.clone()
    changed[8:] = 255 - changed[8:]
    z2 = model.encode(changed)
    assert torch.allclose(z[:2], z2[:2], atol=1e-6) and not torch.allclose(z[2], z2[2])


def test_rope_depends_on_time_difference_only():
    cfg = TINY
    q = torch.randn(1, 1, cfg.tokens_per_frame, 1, cfg.head_dim)
    k = torch.randn(1, 1, cfg.tokens_per_frame, 1, cfg.head_dim)

    def dot(tq, tk):
        cq, sq = wp.rope_angles(cfg, torch.tensor([tq]))
        ck, sk = wp.rope_angles(cfg, torch.tensor([tk]))
        return (wp.apply_rope(q, cq, sq) * wp.apply_rope(k, ck, sk)).sum(-1)

    assert torch.allclose(dot(5, 3), dot(105, 103), atol=1e-4)
    assert not torch.allclose(dot(5, 3), dot(5, 4), atol=1e-3)
    assert torch.allclose(wp.apply_rope(q, *wp.rope_angles(cfg, torch.tensor([7]))).norm(dim=-1), q.norm(dim=-1))


def test_nfd_file_round_trip(model, tmp_path):
    path = tmp_path / "w.nfd"
    nfd_rt.export.save(model, path)
    table, cfg = nfd_rt.export.read_header(path)
    assert cfg == TINY and set(table) == set(model.state_dict())
    loaded = nfd_rt.export.load(path)
    assert isinstance(loaded, wp.WaypointModel)
    u = random_controls(2, seed=6)
    a, b = wp.WaypointSession(model, seed=2), wp.WaypointSession(path, seed=2)
    assert all(np.array_equal(a.step(x), b.step(x)) for x in u)
