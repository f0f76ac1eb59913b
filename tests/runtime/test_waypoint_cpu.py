"""The C++ Waypoint-1.5 plug-in on the CPU (csrc/model/waypoint/) against the PyTorch reference
(`nfd_rt.reference.waypoint.WaypointSession`, the oracle) on `waypoint-tiny`: 4 layers, local layers 0 and 2 (window
3), global layers 1 and 3 (window 8, every 2nd frame kept: 4 slots), control fusion in layers 0 and 3.

The file is written by the Python converter from a random-weight folder in the upstream layout
(`convert.waypoint.write_fixture` + `convert`). Tolerances: latents within 1e-4 of the reference relative to their
largest magnitude (fp32), each step's 4 frames within one uint8 level (the reference rounds half to even after a
resize: a value at a half level may fall either way)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import nfd_rt
from nfd_rt import _checks, configs

torch = pytest.importorskip("torch", reason="the parity oracle is the PyTorch reference (the `torch` extra)")
pytest.importorskip("yaml", reason="the converter reads config.yaml (the `convert` extra)")
_core = pytest.importorskip("nfd_rt._core")

from nfd_rt.convert import waypoint as cw  # noqa: E402
from nfd_rt.reference import waypoint as wp  # noqa: E402

TINY = configs.get("waypoint-tiny")
LATENT_TOL = 1e-4
F = TINY.frames_per_latent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("waypoint")
    cw.write_fixture(d / "Waypoint-1.5-tiny", TINY, seed=3)
    cw.convert(d / "Waypoint-1.5-tiny", d / "waypoint-tiny.nfd")
    return d / "waypoint-tiny.nfd"


class CoreSession(nfd_rt.Session):
    def step_both(self, action):
        """The latent and the decoded frames of one step."""
        return self._open().step(_checks.action(action, self._cfg), True)


def controls(n, seed=0):
    """n control vectors: mouse velocities, a few pressed buttons, scroll signs."""
    rng = np.random.default_rng(seed)
    def one():
        buttons = rng.choice(TINY.n_buttons, int(rng.integers(0, 3)), replace=False).tolist()
        return wp.controls(TINY, buttons=buttons, mouse=rng.uniform(-2, 2, 2), scroll=float(rng.integers(-1, 2)))
    return np.stack([one() for _ in range(n)])


def levels(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def relative(z, zr):
    return float(np.abs(z - zr).max() / np.abs(zr).max())


def assert_rollout_matches(s, r, ctrl, what):
    worst = 0.0
    for c in ctrl:
        z, f = s.step_both(c)
        zr = r.step_latent(c)
        fr = r.decode(zr)
        err = relative(z, zr)
        worst = max(worst, err)
        assert err <= LATENT_TOL, f"{what}: frame {s.frame_index - 1}: latent relative error {err:.3g}"
        assert f.shape == fr.shape == (F, TINY.output_height, TINY.output_width, 3)
        assert levels(f, fr) <= 1, f"{what}: frame {s.frame_index - 1}: pixels differ by more than one level"
    assert s.frame_index == r.frame_index
    return worst


# -- config, tensors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", configs.names("waypoint"))
def test_config_json_round_trip(name):
    cfg = configs.get(name)
    back = _core.config_roundtrip(cfg.to_json())
    assert json.loads(back) == json.loads(cfg.to_json())
    assert configs.from_json(back) == cfg


@pytest.mark.parametrize("name", configs.names("waypoint"))
def test_expected_tensors_match_state_dict(name):
    cfg = configs.get(name)
    with torch.device("meta"):
        model = wp.WaypointModel(cfg, init_seed=None)
    want = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert [(k, list(s)) for k, s in _core.expected_tensors(cfg.to_json())] == want


@pytest.mark.parametrize("changes, match", [
    (dict(num_kv_heads=3), r"num_heads 4 is not divisible by num_kv_heads 3"),
    (dict(global_window=7), r"global_window 7 is not divisible by global_stride 2"),
    (dict(sigmas=[1.0, 0.5, 0.6, 0.0]), r"sigmas \(1, 0.5, 0.6, 0\) must fall strictly from 1.0 to 0.0"),
    (dict(value_residual=1), r"field 'value_residual' must be true or false"),
    (dict(frame_height=60), r"not divisible by the autoencoder factor 16"),
    (dict(bogus=1), r"unknown field 'bogus'"),
    (dict(taehv={**TINY.to_dict()["taehv"], "time_upscale": [True, True, True]}),
     r"taehv encoder time factor 2\*\*2 differs from the decoder's 2\*\*3"),
])
def test_bad_config_is_refused_by_name(changes, match):
    d = {**TINY.to_dict(), **changes}
    with pytest.raises(ValueError, match=match):
        _core.config_roundtrip(json.dumps(d))


# -- parity with the reference ------------------------------------------------------------------------------------------

def test_rollout_rolling_both_caches_matches_the_reference(converted):
    """16 steps from an empty context: the local rings (2 frames back) roll from step 3 on, the global rings (every
    2nd frame, 7 back: 4 slots) from step 8 on. Every latent within 1e-4 (relative), every frame within one level."""
    s = CoreSession(converted, device="cpu", seed=11, dtype="float32")
    r = wp.WaypointSession(converted, seed=11)
    worst = assert_rollout_matches(s, r, controls(16, seed=1), "rollout")
    print(f"waypoint-tiny C++ fp32 vs reference: max latent error over 16 steps {worst:.3g} (relative)")


def test_reset_with_latents_then_rollout(converted):
    """reset(latents, actions) commits the context at sigma 0; reset() forgets it and the decoder's memory."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((5, TINY.latent_channels, TINY.latent_height, TINY.latent_width)).astype(np.float32)
    ctx = controls(5, seed=3)
    s = CoreSession(converted, device="cpu", seed=4, dtype="float32")
    r = wp.WaypointSession(converted, seed=4)
    s.reset(latents=z, actions=ctx)
    r.reset(latents=z, controls=ctx)
    assert s.frame_index == r.frame_index == 5
    assert_rollout_matches(s, r, controls(6, seed=4), "after reset(latents, actions)")
    s.reset()
    r.reset()
    assert_rollout_matches(s, r, controls(3, seed=5), "after reset()")


def test_reset_with_context_frames_matches_the_reference(converted):
    """reset(frames): the TAEHV encoder, latent by latent (4 frames each), continuing its stream across the clip, then
    each context latent committed at sigma 0; the reference encodes the whole clip at once."""
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (3 * F, TINY.output_height, TINY.output_width, 3), dtype=np.uint8)
    ctx = controls(3, seed=7)
    s = CoreSession(converted, device="cpu", seed=8, dtype="float32")
    r = wp.WaypointSession(converted, seed=8)
    s.reset(frames, actions=ctx)
    r.reset(frames=frames, controls=ctx)
    assert s.frame_index == r.frame_index == 3
    worst = assert_rollout_matches(s, r, controls(5, seed=9), "after reset(frames)")
    print(f"waypoint-tiny C++ fp32 after reset(frames): max latent error {worst:.3g} (relative)")


def test_streaming_decoder_matches_the_reference(converted):
    """Session.decode on its own: the first latent primes the decoder's memory, the next ones read it."""
    rng = np.random.default_rng(5)
    s, r = nfd_rt.Session(converted, device="cpu", dtype="float32"), wp.WaypointSession(converted)
    for _ in range(3):
        z = rng.standard_normal((TINY.latent_channels, TINY.latent_height, TINY.latent_width)).astype(np.float32)
        f = s.decode(z)
        assert f.shape == (F, TINY.output_height, TINY.output_width, 3) and f.dtype == np.uint8
        assert levels(f, r.decode(z)) <= 1
    assert s.frame_index == 0


def test_step_batch_equals_stepping_alone(converted):
    m = nfd_rt.Model(converted, device="cpu", dtype="float32")
    batch = [m.session(seed=i) for i in range(3)]
    alone = [m.session(seed=i) for i in range(3)]
    for t in range(10):  # past both windows
        ctrl = controls(3, seed=10 + t)
        zs = nfd_rt.step_latent_batch(batch, ctrl)
        for i, s in enumerate(alone):
            np.testing.assert_allclose(zs[i], s.step_latent(ctrl[i]), rtol=0, atol=1e-5)
    batch = [m.session(seed=i) for i in range(3)]
    alone = [m.session(seed=i) for i in range(3)]
    for t in range(3):
        ctrl = controls(3, seed=30 + t)
        frames = nfd_rt.step_batch(batch, ctrl)
        for i, s in enumerate(alone):
            f = s.step(ctrl[i])
            assert frames[i].shape == f.shape == (F, TINY.output_height, TINY.output_width, 3)
            assert levels(frames[i], f) <= 1


def test_fork_continues_like_a_replay(converted):
    """A fork copies the caches and the decoder's memory: its frames are those of a replay, bit for bit."""
    ctrl = controls(14, seed=6)
    s = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for c in ctrl[:10]:
        s.step(c)
    f = s.fork()
    other = controls(4, seed=7)
    ff = [f.step(c) for c in other]
    fs = [s.step(c) for c in ctrl[10:]]
    replay = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for c in ctrl[:10]:
        replay.step(c)
    assert all(np.array_equal(a, replay.step(c)) for a, c in zip(ff, other))
    again = nfd_rt.Session(converted, device="cpu", seed=9, dtype="float32")
    for c in ctrl[:10]:
        again.step(c)
    assert all(np.array_equal(a, again.step(c)) for a, c in zip(fs, ctrl[10:]))  # the fork left s alone


def test_snapshot_round_trip_is_bitwise(converted):
    """A snapshot holds both cache groups' visible slots and the decoder's memory: a session restored from it
    continues bit for bit (latents and frames)."""
    ctrl = controls(16, seed=8)
    s = CoreSession(converted, device="cpu", seed=2, dtype="float32")
    for c in ctrl[:11]:  # both rings rolled
        s.step(c)
    blob = s.snapshot()
    info = nfd_rt.snapshot_info(blob)
    assert info["frame_index"] == 11
    t = CoreSession(converted, device="cpu", dtype="float32", snapshot=blob)
    for c in ctrl[11:]:
        z1, f1 = s.step_both(c)
        z2, f2 = t.step_both(c)
        assert np.array_equal(z1, z2) and np.array_equal(f1, f2)


BF16 = pytest.param("bfloat16", marks=pytest.mark.skipif(not _core.cpu_bf16()["ok"], reason="no bf16 on this CPU"))


@pytest.mark.parametrize("dtype", ["float32", BF16])
def test_same_seed_same_video_at_one_and_two_threads(converted, dtype):
    ctrl = controls(10, seed=8)
    one = CoreSession(converted, device="cpu", seed=5, threads=1, dtype=dtype)
    two = CoreSession(converted, device="cpu", seed=5, threads=2, dtype=dtype)
    for c in ctrl:
        z1, f1 = one.step_both(c)
        z2, f2 = two.step_both(c)
        assert np.array_equal(z1, z2) and np.array_equal(f1, f2)
    other = CoreSession(converted, device="cpu", seed=6, threads=1, dtype=dtype)
    five = CoreSession(converted, seed=5, dtype=dtype)
    assert not np.array_equal(other.step_latent(ctrl[0]), five.step_latent(ctrl[0]))


@pytest.mark.skipif(not _core.cpu_bf16()["ok"], reason="no bf16 on this CPU")
def test_bfloat16_rollout_stays_close_to_float32(converted):
    """bf16 on the CPU (oneDNN) against the fp32 session over 24 steps (both rings roll several times)."""
    ctrl = controls(24, seed=12)
    f32 = CoreSession(converted, device="cpu", seed=3, dtype="float32")
    b16 = CoreSession(converted, device="cpu", seed=3, dtype="bfloat16")
    assert b16.dtype == "bfloat16"
    worst, mean_levels = 0.0, []
    for c in ctrl:
        z1, f1 = f32.step_both(c)
        z2, f2 = b16.step_both(c)
        worst = max(worst, float(np.linalg.norm(z1 - z2) / np.linalg.norm(z1)))
        mean_levels.append(float(np.abs(f1.astype(np.int16) - f2.astype(np.int16)).mean()))
    print(f"waypoint-tiny bf16 vs fp32: worst latent rel. L2 {worst:.3g}, worst mean frame error "
          f"{max(mean_levels):.3g} levels")
    assert worst < 0.05, worst
    assert max(mean_levels) < 3.0, mean_levels


# -- memory, errors ---------------------------------------------------------------------------------------------------

def test_memory_estimate_before_allocation(converted):
    need = _core.estimate_memory(str(converted), "cpu", "float32")
    assert need["total"] == need["weights"] + need["kv_cache"] + need["activations"] + need["scratch"]
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        nfd_rt.Session(converted, max_memory_bytes=need["total"] - 1, dtype="float32")
    with nfd_rt.Session(converted, max_memory_bytes=need["total"], dtype="float32") as s:  # exactly enough
        assert s.kv_cache_bytes() == need["kv_cache"]
        assert s.memory_bytes() == need["weights"] + need["kv_cache"] + need["activations"]
        # K and V of every layer, each layer's ring of its group's slots.
        per_slot = 2 * TINY.tokens_per_frame * TINY.num_kv_heads * TINY.head_dim * 4
        local = [l for l in range(TINY.depth) if not TINY.is_global(l)]
        assert need["kv_cache"] % per_slot == 0 and need["kv_cache"] // per_slot >= \
            len(local) * TINY.cache_slots(local[0]) + (TINY.depth - len(local)) * TINY.cache_slots(1)
        s.step(controls(1)[0])


def test_bad_input_gives_clear_errors(converted):
    s = nfd_rt.Session(converted, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match=r"action"):
        s.step(np.zeros(TINY.control_dim + 1, np.float32))
    with pytest.raises(ValueError, match=r"not a multiple of 4"):
        s.reset(np.zeros((3, TINY.output_height, TINY.output_width, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, 72, 128, 3\]"):
        s.reset(np.zeros((4, TINY.frame_height, TINY.frame_width, 3), np.uint8))  # the autoencoder's size
    with pytest.raises(ValueError, match=r"latents"):
        s.reset(latents=np.zeros((1, TINY.latent_channels + 1, TINY.latent_height, TINY.latent_width), np.float32))
    assert s.step(controls(1)[0]).shape == (F, TINY.output_height, TINY.output_width, 3)


SCRATCH_PROBE = """
import json, sys
import numpy as np
import nfd_rt
from nfd_rt import _core
path, threads, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with nfd_rt.Session(path, threads=threads, dtype=dtype) as s:
    rng = np.random.default_rng(0)
    cfg = s.config
    s.reset(rng.integers(0, 256, (8, cfg.output_height, cfg.output_width, 3), dtype=np.uint8))  # the encoder
    for i in range(12):  # both rings full
        s.step(rng.uniform(-1, 1, s.config.action_dim).astype(np.float32))
est = _core.estimate_memory(path, "cpu", dtype, threads)
print(json.dumps({"peak": _core.cpu_scratch_peak_bytes(), "bound": est["scratch"]}))
"""


@pytest.mark.parametrize("dtype", ["float32", BF16])
def test_scratch_bound_holds(converted, dtype):
    """The estimate's scratch bound (the plug-in's scratch_bytes_bound) against the ops' high-water mark, in a fresh
    process (the counters are process-wide), after a reset with context frames and steps that fill both rings."""
    import subprocess
    import sys

    for threads in (1, 2):
        r = subprocess.run([sys.executable, "-c", SCRATCH_PROBE, str(converted), str(threads), dtype],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert 0 < got["peak"] <= got["bound"], (threads, got)


def test_c_abi_returns_four_frames_a_step(converted):
    """The C ABI: nfd_session_info.frames_per_step is 4 and a step writes 4 frames, the same bytes as the Python
    session's step (the same library underneath, the same seed)."""
    import ctypes

    from nfd_testfiles import find_c_library

    lib_path = find_c_library()
    if lib_path is None:
        pytest.skip("libnfd_rt.so not found (build it, or set NFD_RT_LIB)")
    lib = ctypes.CDLL(lib_path)

    class Params(ctypes.Structure):
        _fields_ = [("device", ctypes.c_int), ("dtype", ctypes.c_int), ("seed", ctypes.c_uint64),
                    ("threads", ctypes.c_int32), ("cuda_graphs", ctypes.c_int32),
                    ("max_memory_bytes", ctypes.c_uint64), ("speculate", ctypes.c_int32),
                    ("speculate_mode", ctypes.c_int32)]

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int32) for n in ("frame_height", "frame_width", "latent_channels", "latent_height",
                                                   "latent_width", "action_dim", "num_steps", "window",
                                                   "sink_frames")] + \
                   [("frame_index", ctypes.c_int64), ("memory_bytes", ctypes.c_uint64),
                    ("speculated_served", ctypes.c_uint64), ("speculated_discarded", ctypes.c_uint64),
                    ("frames_per_step", ctypes.c_int32)]

    lib.nfd_session_default_params.restype = Params
    lib.nfd_last_error.restype = ctypes.c_char_p
    lib.nfd_session_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(Params), ctypes.POINTER(ctypes.c_void_p)]
    lib.nfd_session_get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(Info)]
    lib.nfd_session_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.nfd_session_close.argtypes = [ctypes.c_void_p]
    p = lib.nfd_session_default_params()
    p.dtype, p.seed, p.threads = 0, 7, 1  # NFD_DTYPE_F32
    s = ctypes.c_void_p()
    assert lib.nfd_session_open(str(converted).encode(), ctypes.byref(p), ctypes.byref(s)) == 0, lib.nfd_last_error()
    try:
        info = Info()
        assert lib.nfd_session_get_info(s, ctypes.byref(info)) == 0
        assert (info.frames_per_step, info.frame_height, info.frame_width) == (F, TINY.output_height, TINY.output_width)
        assert info.action_dim == TINY.control_dim and info.window == TINY.local_window - 1
        py = nfd_rt.Session(converted, device="cpu", dtype="float32", seed=7, threads=1)
        for c in controls(3, seed=13):
            out = np.zeros((F, TINY.output_height, TINY.output_width, 3), np.uint8)
            c = np.ascontiguousarray(c, np.float32)
            assert lib.nfd_session_step(s, c.ctypes.data, out.ctypes.data, None) == 0, lib.nfd_last_error()
            assert np.array_equal(out, py.step(c))
    finally:
        lib.nfd_session_close(s)


# -- nfd-rt serve and play ------------------------------------------------------------------------------------------

# waypoint-tiny has 5 buttons (control dims 2..6) and its scroll at dim 7: a key map in the published models' form.
TINY_KEYS = {"KeyW": 3, "Space": 4, "MouseLeft": 5, "pointer": {"dx": 0, "dy": 1, "scroll": 7, "scale": 0.5}}


def test_the_published_models_key_map_is_their_key_codes():
    """Waypoint's buttons are key codes (Owl-Control: W = 87, button b at control index 2 + b); the mouse is dims
    0 and 1, the wheel the last; examples/waypoint_keys.json is that map, written out."""
    from serve_helpers import ROOT

    from nfd_rt import configs_waypoint

    big = configs.get("waypoint-1.5-1b")
    keys, pointer = configs_waypoint.keymap(big)
    assert (keys["KeyW"], keys["KeyA"], keys["Space"], keys["MouseLeft"], keys["Digit1"]) == (89, 67, 34, 3, 51)
    assert pointer == {"dx": 0, "dy": 1, "scroll": 258, "scale": 1.0}
    from nfd_rt.serve import protocol

    assert protocol.read_keymap(str(ROOT / "examples" / "waypoint_keys.json"), big.control_dim) == \
        (keys, protocol.Pointer(0, 1, 258, 1.0))
    tiny_keys, _ = configs_waypoint.keymap(TINY)  # key codes past its 5 buttons are left out
    assert tiny_keys == {"MouseLeft": 3, "MouseRight": 4, "MouseMiddle": 6}


def test_keys_mouse_and_wheel_become_one_control_vector(tmp_path):
    from nfd_rt.serve import protocol

    p = tmp_path / "keys.json"
    p.write_text(json.dumps(TINY_KEYS))
    keys, pointer = protocol.read_keymap(str(p), TINY.control_dim)
    msg = json.dumps({"type": "keys", "keys": ["KeyW", "MouseLeft"], "mouse": [4, -2.5], "scroll": -1})
    v = protocol.parse_message(msg, TINY.control_dim, keys, pointer).vector
    assert v.tolist() == [2.0, -1.25, 0, 1, 0, 1, 0, -1]
    for bad, match in (({"mouse": [1]}, "dx, dy"), ({"mouse": [1e9, 0]}, "at most"), ({"scroll": 2}, "-1, 0 or 1")):
        with pytest.raises(protocol.ProtocolError, match=match):
            protocol.parse_message(json.dumps({"type": "keys", "keys": [], **bad}), TINY.control_dim, keys, pointer)
    with pytest.raises(protocol.ProtocolError, match="no pointer"):  # a key map without one (Oasis, Gridworld)
        protocol.parse_message(json.dumps({"type": "keys", "keys": [], "mouse": [1, 1]}), TINY.control_dim, keys)
    p.write_text(json.dumps({"KeyW": 3, "pointer": {"dx": 0, "dy": 9}}))
    with pytest.raises(ValueError, match="pointer 'dy' is 9"):
        protocol.read_keymap(str(p), TINY.control_dim)


def _recv_image(ws):
    from serve_helpers import decode

    while not isinstance(m := ws.recv(timeout=60), bytes):
        pass
    return decode(m)


def test_serve_plays_a_waypoint_file_keys_mouse_four_frames_a_message(converted, tmp_path):
    """`nfd-rt serve waypoint-tiny.nfd --keymap K`: the page's keys, mouse movement and wheel become one control
    vector; each step comes back as one PNG of its 4 frames stacked top to bottom, bit for bit the frames of an
    fp32 session stepped with the same vectors. A reconnect with ?resume= shows the last step's 4 frames and goes
    on exactly as a session never interrupted (the snapshot holds the decoder's memory)."""
    from serve_helpers import load_bench, need_serve_extra

    need_serve_extra()
    from websockets.sync.client import connect

    H, W = TINY.output_height, TINY.output_width
    keymap = tmp_path / "keys.json"
    keymap.write_text(json.dumps(TINY_KEYS))
    msgs = [{"type": "keys", "keys": ["KeyW"], "mouse": [4, -2], "scroll": 1},
            {"type": "keys", "keys": [], "mouse": [0, 0], "scroll": 0},
            {"type": "keys", "keys": ["Space", "MouseLeft"], "mouse": [-6, 1], "scroll": -1},
            {"type": "keys", "keys": ["KeyW"]}]
    ref = nfd_rt.Session(converted, device="cpu", dtype="float32", seed=3, threads=1)
    ref.reset()
    want = []
    for m in msgs:
        c = np.zeros(TINY.control_dim, np.float32)
        for k in m["keys"]:
            c[TINY_KEYS[k]] = 1
        c[0], c[1] = [0.5 * x for x in m.get("mouse", [0, 0])]
        c[7] = m.get("scroll", 0)
        want.append(ref.step(c).reshape(F * H, W, 3))
    with load_bench().ServerProcess(str(converted), "--keymap", str(keymap), "--dtype", "float32", "--threads", "1",
                                    "--fps", "10", log_path=str(tmp_path / "serve.log")) as srv:
        assert srv.health()["model"] == "waypoint-tiny"
        with connect(f"{srv.ws_url}?format=png&seed=3") as ws:
            hello = json.loads(ws.recv(timeout=60))
            assert (hello["width"], hello["height"], hello["frames_per_step"]) == (W, H, F)
            assert hello["pointer"] is True and hello["action_dim"] == TINY.control_dim
            assert hello["world"] == "blank" and sorted(hello["keys"]) == ["KeyW", "MouseLeft", "Space"]
            token = hello["resume"]
            for m, w in zip(msgs[:2], want):
                ws.send(json.dumps(m))
                got = _recv_image(ws)
                assert got.shape == (F * H, W, 3) and np.array_equal(got, w)
        with connect(f"{srv.ws_url}?format=png&resume={token}") as ws:
            assert json.loads(ws.recv(timeout=60))["resumed"] is True
            assert np.array_equal(_recv_image(ws), want[1])  # the last step's 4 frames, where the player left
            for m, w in zip(msgs[2:], want[2:]):
                ws.send(json.dumps(m))
                assert np.array_equal(_recv_image(ws), w)


def test_serve_brings_waypoints_own_key_map_and_sizes_a_world_by_the_runtime(converted, tmp_path):
    """Without --keymap a Waypoint file brings its controls' key map and pointer; the bound of a parked world is
    the runtime's bound of its snapshot (both cache groups full, the decoder's memory) plus one message's 4 frames:
    at least every real snapshot of a long rollout, and --max-parked-bytes below it is refused, naming it."""
    import subprocess

    from serve_helpers import need_serve_extra

    need_serve_extra()
    from nfd_testfiles import subprocess_env

    from nfd_rt.serve import protocol, worlds

    world = protocol.make_world("auto", str(converted), None, TINY.control_dim, TINY)
    assert world.name == "blank" and world.keymap == {"MouseLeft": 3, "MouseRight": 4, "MouseMiddle": 6}
    assert world.pointer == protocol.Pointer(0, 1, 7, 1.0)
    one = worlds.world_bytes(str(converted), TINY, "cpu", "float32")
    frames = F * TINY.output_height * TINY.output_width * 3
    s = nfd_rt.Session(converted, device="cpu", dtype="float32", seed=0, threads=1)
    s.reset()
    sizes = []
    for c in controls(20, seed=5):
        s.step(c)
        sizes.append(len(s.snapshot()))
    assert max(sizes) + frames <= one <= max(sizes) + frames + 4096
    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "serve", str(converted), "--dtype", "float32",
                        "--max-parked-bytes", str(one - 1)], capture_output=True, text=True, timeout=120,
                       env=subprocess_env())
    assert r.returncode != 0 and f"up to {one} bytes" in r.stderr, r.stderr


def test_play_turns_keys_mouse_and_wheel_into_controls(converted, tmp_path, monkeypatch):
    """`nfd-rt play` on a Waypoint file (headless SDL, events posted as a player's): held keys, the mouse's movement
    since the last step (once a click captured it) and the wheel make each step's control vector through the key
    map, as serve builds it; a step's 4 frames are shown; the CLI runs it from the file."""
    pygame = pytest.importorskip("pygame", reason="pygame is not installed (pip install 'nfd_rt[play]')")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from nfd_rt.demo.play_controls import key_code_name, play_controls
    from nfd_rt.serve import protocol

    assert [key_code_name(n) for n in ("w", "7", "left shift", "space", "f13")] == \
        ["KeyW", "Digit7", "ShiftLeft", "Space", None]
    keymap_file = tmp_path / "keys.json"
    keymap_file.write_text(json.dumps(TINY_KEYS))
    keymap, pointer = protocol.read_keymap(str(keymap_file), TINY.control_dim)
    E = pygame.event.Event
    script = [[E(pygame.KEYDOWN, key=pygame.K_w), E(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0)),
               E(pygame.MOUSEMOTION, rel=(5, -3), pos=(0, 0), buttons=(0, 0, 0)),
               E(pygame.MOUSEWHEEL, x=0, y=1, flipped=False)],
              [E(pygame.KEYUP, key=pygame.K_w), E(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0))], []]
    seen = []

    class Scripted(nfd_rt.Session):
        def reset(self, *a, **k):
            super().reset(*a, **k)
            for e in script.pop(0):
                pygame.event.post(e)

        def step(self, c):
            seen.append(np.array(c))
            for e in script.pop(0):
                pygame.event.post(e)
            return super().step(c)

    with Scripted(converted, dtype="float32", threads=1) as s:
        result = play_controls(s, keymap, pointer, scale=2, fps=1000, max_steps=2)
    assert result["steps"] == 2 and result["frames"] == 2 * F
    assert seen[0].tolist() == [2.5, -1.5, 0, 1, 0, 0, 0, 1]  # W, the mouse (x 0.5), the wheel up
    assert seen[1].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]  # W released; a click once captured is the left button
    import subprocess

    from nfd_testfiles import subprocess_env

    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "play", "--model", str(converted), "--dtype", "float32",
                        "--threads", "1", "--max-frames", "2", "--fps", "1000"], capture_output=True, text=True,
                       timeout=120, env=subprocess_env(SDL_VIDEODRIVER="dummy"))
    assert r.returncode == 0 and "played 2 steps (8 frames)" in r.stdout, r.stdout + r.stderr
