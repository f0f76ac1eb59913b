"""The C++ Oasis plug-in on the CPU (csrc/model/oasis/) against the PyTorch reference (`OasisReferenceSession`,
sampler "cached", the oracle) on `oasis-tiny` (a 6-frame window, so rollouts roll it quickly).

Two files: one written by the Python converter from random weights in upstream's layout
(`write_upstream_fixture` + `convert`), one by `nfd_rt.export.save(OasisModel)`. Tolerances: latents within 1e-4
(max abs), frames within one uint8 level (the reference truncates: a value at an integer boundary may fall either
way)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nfd_rt
from nfd_rt import _checks, configs

torch = pytest.importorskip("torch", reason="the parity oracle is the PyTorch reference (the `torch` extra)")
_core = pytest.importorskip("nfd_rt._core")

from nfd_rt.convert.oasis import convert, write_upstream_fixture  # noqa: E402
from nfd_rt.export import save  # noqa: E402
from nfd_rt.reference import OasisModel, OasisReferenceSession  # noqa: E402

TINY = configs.get("oasis-tiny")
LATENT_TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """oasis-tiny converted from random weights in upstream's layout."""
    d = tmp_path_factory.mktemp("oasis")
    write_upstream_fixture("oasis-tiny", d / "dit.safetensors", d / "vae.safetensors", seed=3)
    convert(d / "dit.safetensors", d / "vae.safetensors", d / "oasis-tiny.nfd", config="oasis-tiny")
    return d / "oasis-tiny.nfd"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("oasis") / "exported.nfd"
    save(OasisModel(TINY, init_seed=1), path)
    return path


class CoreSession(nfd_rt.Session):
    def step_both(self, action):
        """The latent and the decoded frame of one step."""
        return self._open().step(_checks.action(action, self._cfg), True)


def actions(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, TINY.action_dim)).astype(np.float32)


def within_one_level(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def assert_rollout_matches(s, r, acts, what):
    worst = 0.0
    for i, a in enumerate(acts):
        z, f = s.step_both(a)
        zr = r.step_latent(a)
        fr = r.decode(zr)
        err = float(np.abs(z - zr).max())
        worst = max(worst, err)
        assert err <= LATENT_TOL, f"{what}: frame {s.frame_index - 1}: latent max error {err:.3g}"
        assert within_one_level(f, fr) <= 1, f"{what}: frame {s.frame_index - 1}: pixels differ by more than 1"
    assert s.frame_index == r.frame_index
    return worst


# -- config, tensors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", configs.names("oasis"))
def test_config_json_round_trip(name):
    """The C++ parser reads every field of Python's to_json and writes the same JSON back."""
    cfg = configs.get(name)
    back = _core.config_roundtrip(cfg.to_json())
    assert json.loads(back) == json.loads(cfg.to_json())
    assert json.dumps(json.loads(back), sort_keys=True) == cfg.to_json()  # the same text, Python's spacing
    assert configs.from_json(back) == cfg


@pytest.mark.parametrize("name", configs.names("oasis"))
def test_expected_tensors_match_state_dict(name):
    cfg = configs.get(name)
    with torch.device("meta"):
        model = OasisModel(cfg, init_seed=None)
    want = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert [(k, list(s)) for k, s in _core.expected_tensors(cfg.to_json())] == want


@pytest.mark.parametrize("changes, match", [
    (dict(noise_clamp=1.0), r"noise_clamp 1 is below 6"),
    (dict(beta_schedule="linear"), r"beta_schedule 'linear' is unknown"),
    (dict(timesteps=[5, 7]), r"timesteps \(5, 7\) must be distinct integer levels"),
    (dict(timesteps=[2000]), r"timesteps \(2000\) must be distinct integer levels in \[0, 1000\)"),
    (dict(context_level=1000), r"context_level 1000 must be in \[0, 1000\)"),
    (dict(num_heads=5), r"hidden_size 64 is not divisible by num_heads 5"),
    (dict(spatial_rope_dim=10), r"spatial_rope_dim 10 must be even"),
    (dict(frame_height=50), r"not divisible by the VAE patch size 8"),
    (dict(max_frames=0), r"field 'max_frames' = 0 is out of range"),
    (dict(bogus=1), r"unknown field 'bogus'"),
    (dict(vae={**TINY.to_dict()["vae"], "rope_dim": 10}), r"VAE rope_dim 10 must be even, >= 2 and at most half"),
    (dict(vae={**TINY.to_dict()["vae"], "extra": 1}), r"unknown field 'vae.extra'"),
])
def test_bad_config_is_refused_by_name(changes, match):
    d = {**TINY.to_dict(), **changes}
    with pytest.raises(ValueError, match=match):
        _core.config_roundtrip(json.dumps(d))


# -- parity with the reference ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["converted", "exported"])
def test_rollout_past_the_window_matches_the_reference(which, request):
    """15 frames from an empty context: the window (max_frames 6) rolls twice; every latent within 1e-4 of the
    reference's cached sampler, every pixel within one level."""
    path = request.getfixturevalue(which)
    s = CoreSession(path, device="cpu", seed=11, dtype="float32")
    r = OasisReferenceSession(path, seed=11)
    s.reset()
    r.reset()
    worst = assert_rollout_matches(s, r, actions(15, seed=1), which)
    print(f"{which}: max latent error over 15 frames {worst:.3g}")


def test_reset_with_context_frames_and_latents(converted):
    """reset(frames) runs the ViT encoder; reset(latents, actions) takes latents as they are: then both match."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)
    s = CoreSession(converted, device="cpu", seed=4, dtype="float32")
    r = OasisReferenceSession(converted, seed=4)
    s.reset(frames)
    r.reset(frames)
    assert s.frame_index == r.frame_index == 3
    assert_rollout_matches(s, r, actions(5, seed=2), "after reset(frames)")
    latents = rng.standard_normal((4, TINY.latent_channels, TINY.latent_height, TINY.latent_width)).astype(np.float32)
    acts = actions(4, seed=3)
    s.reset(latents=latents, actions=acts)
    r.reset(latents=latents, actions=acts)
    assert_rollout_matches(s, r, actions(6, seed=4), "after reset(latents, actions)")


def test_encoder_and_decoder_match_the_reference(converted):
    """The ViT decoder on its own (Session.decode), and the encoder through the cache it fills."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((TINY.latent_channels, TINY.latent_height, TINY.latent_width)).astype(np.float32)
    s, r = nfd_rt.Session(converted, device="cpu", dtype="float32"), OasisReferenceSession(converted)
    assert within_one_level(s.decode(z), r.decode(z)) <= 1
    assert s.frame_index == 0


def test_step_batch_equals_stepping_alone(converted):
    m = nfd_rt.Model(converted, device="cpu", dtype="float32")
    batch = [m.session(seed=i) for i in range(3)]
    alone = [m.session(seed=i) for i in range(3)]
    for t in range(8):  # past the window
        acts = actions(3, seed=10 + t)
        zs = nfd_rt.step_latent_batch(batch, acts)
        for i, s in enumerate(alone):
            np.testing.assert_allclose(zs[i], s.step_latent(acts[i]), rtol=0, atol=1e-5)
    frames = nfd_rt.step_batch(batch, actions(3, seed=30))
    for i, s in enumerate(alone):
        assert within_one_level(frames[i], s.step(actions(3, seed=30)[i])) <= 1


def test_fork_continues_like_a_replay(converted):
    acts = actions(10, seed=6)
    s = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for a in acts[:7]:
        s.step_latent(a)
    f = s.fork()
    other = actions(4, seed=7)
    zf = [f.step_latent(a) for a in other]
    zs = [s.step_latent(a) for a in acts[7:]]
    replay = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for a in acts[:7]:
        replay.step_latent(a)
    assert all(np.array_equal(z, replay.step_latent(a)) for z, a in zip(zf, other))
    again = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for a in acts[:7]:
        again.step_latent(a)
    assert all(np.array_equal(z, again.step_latent(a)) for z, a in zip(zs, acts[7:]))  # the fork left s alone


BF16 = pytest.param("bfloat16", marks=pytest.mark.skipif(not _core.cpu_bf16()["ok"], reason="no bf16 on this CPU"))


@pytest.mark.parametrize("dtype", ["float32", BF16])
def test_same_seed_same_video_at_one_and_two_threads(converted, dtype):
    acts = actions(9, seed=8)
    one = CoreSession(converted, device="cpu", seed=5, threads=1, dtype=dtype)
    two = CoreSession(converted, device="cpu", seed=5, threads=2, dtype=dtype)
    for a in acts:
        z1, f1 = one.step_both(a)
        z2, f2 = two.step_both(a)
        assert np.array_equal(z1, z2) and np.array_equal(f1, f2)
    other = CoreSession(converted, device="cpu", seed=6, threads=1, dtype=dtype)
    five = CoreSession(converted, seed=5, dtype=dtype)
    assert not np.array_equal(other.step_latent(acts[0]), five.step_latent(acts[0]))


@pytest.mark.skipif(not _core.cpu_bf16()["ok"], reason="no bf16 on this CPU")
def test_bfloat16_rollout_stays_close_to_float32(converted):
    """bf16 on the CPU (oneDNN) against the fp32 session, 40 frames (the 6-frame window rolls many times): the
    latents within a bf16 relative error, the frames within a few levels on average."""
    acts = actions(40, seed=12)
    f32 = CoreSession(converted, device="cpu", seed=3, dtype="float32")
    b16 = CoreSession(converted, device="cpu", seed=3, dtype="bfloat16")
    assert b16.dtype == "bfloat16"
    worst, mean_levels = 0.0, []
    for a in acts:
        z1, f1 = f32.step_both(a)
        z2, f2 = b16.step_both(a)
        worst = max(worst, float(np.linalg.norm(z1 - z2) / np.linalg.norm(z1)))
        mean_levels.append(float(np.abs(f1.astype(np.int16) - f2.astype(np.int16)).mean()))
    assert worst < 0.05, worst
    assert max(mean_levels) < 3.0, mean_levels


# -- memory ---------------------------------------------------------------------------------------------------------

def test_memory_estimate_before_allocation(converted):
    cfg = TINY
    need = _core.estimate_memory(str(converted), "cpu", "float32")
    assert need["total"] == need["weights"] + need["kv_cache"] + need["activations"] + need["scratch"]
    # Temporal K and V per layer: max_frames slots (the window of max_frames - 1 frames + the current one).
    assert need["kv_cache"] == 2 * cfg.depth * cfg.max_frames * cfg.tokens_per_frame * cfg.hidden_size * 4
    # The file's tensors but the time-embedding MLP (run once on the host: its outputs for the frame's levels stay),
    # plus the RoPE tables and the residual gates of ones the plug-in computes.
    floats = sum(int(np.prod(s)) for n, s in _core.expected_tensors(cfg.to_json()) if "time_embed" not in n)
    floats += (cfg.num_steps + 1) * cfg.hidden_size  # the time embedding of each pass's level
    floats += cfg.tokens_per_frame * cfg.spatial_rope_dim * 2 + cfg.vae.encoder_dim + cfg.vae.decoder_dim
    floats += cfg.latent_height * cfg.latent_width * cfg.vae.rope_dim * 2
    assert need["weights"] == 4 * floats
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        nfd_rt.Session(converted, max_memory_bytes=need["total"] - 1, dtype="float32")
    with nfd_rt.Session(converted, max_memory_bytes=need["total"], dtype="float32") as s:  # exactly enough
        assert s.kv_cache_bytes() == need["kv_cache"]
        assert s.memory_bytes() == need["weights"] + need["kv_cache"] + need["activations"]
        s.reset(np.zeros((2, cfg.frame_height, cfg.frame_width, 3), np.uint8))
        s.step(actions(1)[0])
    # The scratch bound against the ops' high-water mark: tests/test_memory.py (oasis-tiny is one of its configs).


# -- serve ----------------------------------------------------------------------------------------------------------

def test_serve_plays_an_oasis_file_with_its_key_map(exported, tmp_path):
    """`nfd-rt serve oasis.nfd --keymap examples/oasis_keys.json`: the page's keys become Oasis' button actions
    (W = forward, dim 11, ...); frames come back at the model's size. (The camera is continuous: send
    {"type": "action"} messages for it.)"""
    from serve_helpers import ROOT, decode, load_bench, need_serve_extra

    need_serve_extra()
    from websockets.sync.client import connect

    keymap = ROOT / "examples" / "oasis_keys.json"
    assert json.loads(keymap.read_text())["KeyW"] == 11  # upstream's ACTION_KEYS: forward
    with load_bench().ServerProcess(str(exported), "--keymap", str(keymap), "--threads", "1", "--fps", "10",
                                    log_path=str(tmp_path / "serve.log")) as srv:
        assert srv.health()["model"] == "oasis-tiny"
        with connect(f"{srv.ws_url}?format=png&seed=3") as ws:
            hello = json.loads(ws.recv(timeout=60))
            assert hello["width"] == TINY.frame_width and hello["height"] == TINY.frame_height
            assert hello["world"] == "blank" and "KeyW" in hello["keys"] and hello["action_dim"] == 25
            ws.send(json.dumps({"type": "keys", "keys": ["KeyW", "Space"]}))
            while not isinstance(m := ws.recv(timeout=60), bytes):
                pass
            assert decode(m).shape == (TINY.frame_height, TINY.frame_width, 3)
            a = [0.0] * 25
            a[15] = 0.5  # cameraX
            ws.send(json.dumps({"type": "action", "action": a}))
            while not isinstance(m := ws.recv(timeout=60), bytes):
                pass
            assert decode(m).shape == (TINY.frame_height, TINY.frame_width, 3)


def test_docs_snippets_convert_then_run(tmp_path):
    """docs/oasis.md as written: convert random upstream-layout weights, then the 'Running in nfd_rt' snippet."""
    import subprocess

    from nfd_testfiles import snippet, subprocess_env

    env = subprocess_env()
    for name in ("oasis-convert", "oasis-run"):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet("oasis.md", name)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["9", "(48,", "96,", "3)"]  # 1 prompt frame + 8 generated
