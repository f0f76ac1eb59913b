"""Snapshots: `Session.snapshot()` and `Model.session(snapshot=...)` (docs/snapshots.md).

A restored session must produce bitwise the frames the original would have produced (CPU), at every fill level
of the cache, without sharing anything with the original; every bad blob is a ValueError naming what is wrong.
"""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfd_rt
from nfd_rt import _core, configs
from nfd_testfiles import MICRO, random_nfd

CFG = configs.get("tiny")  # window 8, 1 sink frame
A = CFG.action_dim
HEADER, TRAILER = 32, 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "tiny.nfd"
    path.write_bytes(random_nfd(CFG, seed=11))
    return str(path)


@pytest.fixture(scope="module")
def model(model_path):
    return nfd_rt.Model(model_path, dtype="float32")  # the byte counts below are fp32's


def actions(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, A)).astype(np.float32)


def key(i: int) -> np.ndarray:
    a = np.zeros(A, np.float32)
    a[i % A] = 1.0
    return a


def run(session, acts) -> list[np.ndarray]:
    """Frames and latents, alternately (both paths of a step)."""
    return [session.step(a) if i % 2 == 0 else session.step_latent(a) for i, a in enumerate(acts)]


def assert_same(got, want, what):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"{what}: frame {i} after the snapshot")


def state_bytes(cfg, frames: int, itemsize: int = 4) -> int:
    """The formula of docs/snapshots.md: K and V of every layer for every saved frame."""
    return frames * cfg.depth * 2 * cfg.tokens_per_frame * cfg.hidden_size * itemsize


def meta_of(blob: bytes) -> dict:
    (m,) = struct.unpack_from("<I", blob, 12)
    return json.loads(blob[HEADER:HEADER + m])


def reseal(blob: bytes, meta: dict | None = None, raw_meta: bytes | None = None) -> bytes:
    """The blob with new metadata and a valid header and CRC: a crafted blob whose checksum holds."""
    (m,) = struct.unpack_from("<I", blob, 12)
    state = blob[HEADER + m:-TRAILER]
    text = raw_meta if raw_meta is not None else json.dumps(meta).encode()
    text += b" " * (-len(text) % 8)
    total = HEADER + len(text) + len(state) + TRAILER
    body = b"nfdsnap\0" + struct.pack("<IIQQ", 1, len(text), len(state), total) + text + state
    return body + struct.pack("<I", _core.crc32c(body))


def crc32c_reference(data: bytes) -> int:
    """CRC-32C (Castagnoli) bit by bit, straight from its definition: the oracle of the runtime's two versions."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_is_castagnolis():
    assert crc32c_reference(b"123456789") == 0xE3069283  # the standard check value (RFC 3720's CRC)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 63, 1000, 4099):
        data = rng.integers(0, 256, n + 3, dtype=np.uint8).tobytes()
        for start in (0, 1, 3):  # unaligned starts
            want = crc32c_reference(data[start:start + n])
            assert _core.crc32c(data[start:start + n]) == want
            assert _core.crc32c(data[start:start + n], software=True) == want


# -- the restored session continues bitwise --------------------------------------------------------------------------

def prepare(session, how: str) -> None:
    """Brings a session to one of the cache's fill levels."""
    full = CFG.sink_frames + CFG.window
    if how == "empty":
        return
    if how == "partial":
        run(session, actions(3, 1))
    elif how == "full":
        run(session, actions(full, 2))
    elif how == "rolled":  # past the ring's wrap-around: slots reused, the window's oldest frames evicted
        run(session, actions(2 * full + 3, 3))
    elif how == "context":  # reset with context frames (encoded by the VAE), then steps
        frames = np.random.default_rng(4).integers(0, 256, (2, CFG.frame_height, CFG.frame_width, 3), np.uint8)
        session.reset(frames, actions=actions(2, 5))
        run(session, actions(2, 6))
    elif how == "reset_latents":
        lat = np.random.default_rng(7).standard_normal(
            (CFG.window + 3, CFG.latent_channels, CFG.latent_height, CFG.latent_width)).astype(np.float32)
        session.reset(latents=lat)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["empty", "partial", "full", "rolled", "context", "reset_latents"])
def test_restored_session_continues_bitwise(model, how):
    s = model.session(seed=21)
    prepare(s, how)
    blob = s.snapshot()
    control = s.fork()  # what the original would produce, known from fork's own tests
    n = 2 * CFG.window + 3
    acts = actions(n, 100)

    # A restored session that goes elsewhere first must leave the original alone (no aliasing).
    other = model.session(snapshot=blob)
    assert other.frame_index == s.frame_index and other.seed == 21
    run(other, actions(n, 200))
    original = run(s, acts)
    assert_same(original, run(control, acts), "original vs its fork")

    # A session restored from the same bytes later (the original has moved on) gives the original's frames.
    restored = model.session(snapshot=blob)
    assert_same(run(restored, acts), original, f"restored ({how})")
    assert restored.frame_index == s.frame_index


def test_blob_holds_the_visible_frames_only(model):
    s = model.session(seed=1)
    full = CFG.sink_frames + CFG.window
    assert meta_of(s.snapshot())["frames"] == []
    run(s, actions(3, 0))
    assert meta_of(s.snapshot())["frames"] == [0, 1, 2]
    run(s, actions(2 * full + 4, 0))
    n = s.frame_index
    info = nfd_rt.snapshot_info(s.snapshot())
    # Sinks and the last `window` frames: what frame n sees.
    assert info["frames"] == list(range(CFG.sink_frames)) + list(range(n - CFG.window, n))
    assert info["frame_index"] == n
    assert info["state_bytes"] == state_bytes(CFG, full)
    blob = s.snapshot()
    (m,) = struct.unpack_from("<I", blob, 12)
    assert len(blob) == HEADER + m + state_bytes(CFG, full) + TRAILER == info["size"]
    assert m % 8 == 0 and m < 2048
    assert struct.unpack_from("<I", blob, len(blob) - 4)[0] == _core.crc32c(blob[:-4], software=True)


def test_restore_with_its_own_model_copy_and_other_options(model, model_path):
    s = model.session(seed=5)
    prepare(s, "rolled")
    blob = s.snapshot()
    acts = [key(i // 3) for i in range(CFG.window + 6)]  # repeats, so the frames ahead are served too
    want = run(s.fork(), acts)
    with nfd_rt.Session(model_path, snapshot=blob, threads=1, dtype="float32") as own:  # its own weights
        assert_same(run(own, acts), want, "Session(path, snapshot=)")
    # Speculation may differ from the original's (another ring size): the frames are the same.
    spec = model.session(snapshot=blob, speculate=3)
    for i, a in enumerate(acts):
        time.sleep(0.01)  # let the worker run ahead
        got = spec.step(a) if i % 2 == 0 else spec.step_latent(a)
        np.testing.assert_array_equal(got, want[i], err_msg=f"speculate=3: frame {i}")
    assert spec.speculation_stats()["served"] > 0
    spec.close()


def test_snapshot_of_a_snapshot_is_the_same_blob(model):
    s = model.session(seed=8)
    prepare(s, "rolled")
    blob = s.snapshot()
    assert model.session(snapshot=blob).snapshot() == blob
    assert s.snapshot() == blob  # taking a snapshot changes nothing


def test_snapshot_of_exact_speculation_is_the_served_state(model):
    """Frames generated ahead are not saved; the original keeps them (and serves them), the restored session
    computes them again: the same frames, since exact speculation produces plain stepping's frames."""
    s = model.session(seed=3, speculate=4)
    for _ in range(6):
        s.step(key(0))
        time.sleep(0.02)  # the worker runs ahead under key 0
    stats = s.speculation_stats()
    blob = s.snapshot()
    info = nfd_rt.snapshot_info(blob)
    assert info["frame_index"] == s.frame_index == 6
    assert max(info["frames"]) == 5
    assert s.speculation_stats() == stats  # nothing discarded by the snapshot
    restored = model.session(snapshot=blob)
    acts = [key(0)] * 3 + [key(1)] * 3 + [key(0)] * (CFG.window + 2)
    for i, a in enumerate(acts):
        np.testing.assert_array_equal(restored.step(a), s.step(a), err_msg=f"frame {i}")
    assert s.speculation_stats()["served"] > stats["served"]  # the kept frames ahead were served
    s.close()


def test_snapshot_of_parallel_speculation_continues_like_a_fork(model):
    """Parallel mode: the snapshot, like fork(), is the served state; the rest of a group is not saved."""
    s = model.session(seed=4, speculate=3, speculate_mode="parallel")
    for _ in range(4):
        s.step(key(0))  # a group of 3, then a second group of which one frame was served
    blob = s.snapshot()
    assert nfd_rt.snapshot_info(blob)["frame_index"] == 4
    # A fork keeps the options (parallel, k = 3), so the restored session takes them too: parallel groups do
    # not give plain stepping's frames.
    fork = s.fork()
    restored = model.session(snapshot=blob, speculate=3, speculate_mode="parallel")
    acts = [key(i // 4) for i in range(CFG.window + 6)]
    assert_same(run(restored, acts), run(fork, acts), "restored vs fork of a parallel-speculating session")


def test_restored_sessions_batch(model):
    s = model.session(seed=2)
    prepare(s, "full")
    blob = s.snapshot()
    a, b = model.session(snapshot=blob), model.session(snapshot=blob)
    alone = model.session(snapshot=blob)
    acts = actions(4, 3)
    for t in range(4):
        got = nfd_rt.step_latent_batch([a, b], np.stack([acts[t], acts[t]]))
        want = alone.step_latent(acts[t])
        assert np.abs(got - want).max() <= 1e-5  # batched GEMMs round differently (docs/batching.md)


def test_micro_config_and_more_sinks(tmp_path):
    """Other ring shapes: the smallest config (1 layer, window 2) and three sink frames."""
    for cfg in (MICRO, CFG.replace(name="sinks", sink_frames=3, window=4)):
        path = tmp_path / f"{cfg.name}.nfd"
        path.write_bytes(random_nfd(cfg, seed=2))
        m = nfd_rt.Model(path)
        s = m.session(seed=9)
        for t in range(2 * (cfg.sink_frames + cfg.window) + 1):
            s.step_latent(np.eye(cfg.action_dim, dtype=np.float32)[t % cfg.action_dim])
            if t in (1, cfg.sink_frames + 1, cfg.sink_frames + cfg.window + 2):
                blob = s.snapshot()
                info = nfd_rt.snapshot_info(blob)
                n = s.frame_index
                assert info["frames"] == [j for j in range(n) if j < cfg.sink_frames or n - j <= cfg.window]
                acts = np.random.default_rng(t).standard_normal((2 * cfg.window + 3, cfg.action_dim)).astype(np.float32)
                assert_same(run(m.session(snapshot=blob), acts), run(s.fork(), acts), f"{cfg.name} at {n}")


# -- bad blobs: a clear error, and everything stays usable -----------------------------------------------------------

@pytest.fixture(scope="module")
def blob(model):
    s = model.session(seed=13)
    prepare(s, "rolled")
    return s.snapshot()


def refused(model, data, match: str):
    with pytest.raises(ValueError, match=match) as e:
        model.session(snapshot=data)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_not_a_snapshot(model, model_path, blob):
    refused(model, b"", r"^snapshot: empty \(0 bytes\)")
    refused(model, b"hello, world" * 10, r"^snapshot: not an nfd_rt snapshot")
    with open(model_path, "rb") as f:
        refused(model, f.read(), r"^snapshot: not an nfd_rt snapshot")  # a .nfd file is not a snapshot
    with pytest.raises(ValueError, match="must be a bytes-like object .* got str"):
        model.session(snapshot="nfdsnap")


def test_truncated_and_padded(model, blob):
    for n in (3, 8, 31):
        refused(model, blob[:n], rf"^snapshot: truncated: {n} bytes, shorter than the 32-byte header")
    for n in (32, 100, len(blob) // 2, len(blob) - 1):
        refused(model, blob[:n], rf"^snapshot: truncated: expected {len(blob)} bytes, got {n}$")
    refused(model, blob + b"\0", rf"^snapshot: has {len(blob) + 1} bytes, expected {len(blob)}")


def test_unknown_version(model, blob):
    newer = blob[:8] + struct.pack("<I", 2) + blob[12:]
    refused(model, newer, r"format version 2 is not supported: nfd_rt .* reads version 1")


def test_corruption_is_detected(model, blob):
    (m,) = struct.unpack_from("<I", blob, 12)
    for at in (HEADER + 5, HEADER + m + 1000, len(blob) - 5, len(blob) - 1):  # metadata, state, CRC
        bad = bytearray(blob)
        bad[at] ^= 0x10
        refused(model, bytes(bad), r"^snapshot: corrupted: its CRC-32C is [0-9a-f]{8}, the blob says [0-9a-f]{8}$")
    sizes = bytearray(blob)
    struct.pack_into("<I", sizes, 12, m + 8)  # metadata size no longer adds up
    refused(model, bytes(sizes), r"corrupted: the header's sizes do not add up")


def test_another_model_with_the_same_config(model, blob, tmp_path):
    path = tmp_path / "other.nfd"
    path.write_bytes(random_nfd(CFG, seed=12))  # same config, other weights
    msg = refused(nfd_rt.Model(path), blob, r"^snapshot: it is of another model with the same config: weights "
                                             r"fingerprint [0-9a-f]{16} in the snapshot, [0-9a-f]{16} for this")
    assert nfd_rt.snapshot_info(blob)["weights_fingerprint"] in msg


def test_another_config(model, blob, tmp_path):
    path = tmp_path / "wider.nfd"
    path.write_bytes(random_nfd(CFG.replace(window=4, sink_frames=2), seed=11))
    refused(nfd_rt.Model(path), blob, r"^snapshot: it is of another model: config differs: sink_frames is 1 in "
                                      r"the snapshot, 2 in this model; window is 8 in the snapshot, 4 in this model$")
    micro = tmp_path / "micro.nfd"
    micro.write_bytes(random_nfd(MICRO))
    refused(nfd_rt.Model(micro), blob, r"config differs: .*; and \d+ more$")


def test_crafted_metadata(model, blob):
    """Blobs whose CRC holds but whose metadata lies: each named."""
    meta = meta_of(blob)

    def with_(**changes):
        m = dict(meta)
        for k, v in changes.items():
            if v is None:
                del m[k]
            else:
                m[k] = v
        return reseal(blob, m)

    refused(model, with_(architecture="oasis"), r"architecture 'oasis', this model's is 'nfd'")
    # Strings from a blob are quoted printable: control and non-ASCII bytes escaped, one line.
    refused(model, with_(architecture="a\nb\u00e9"), r"architecture 'a\\x0ab\\xc3\\xa9', this model's")
    refused(model, with_(dtype="x" * 100), r"taken from a x{40}\.\.\. session")
    refused(model, with_(dtype="bfloat16"), r"taken from a bfloat16 session, this session computes in float32")
    refused(model, with_(config={**meta["config"], "name": "tiny2"}), r"config differs: name is \"tiny2\"")
    refused(model, with_(seed=None), r"metadata has no field 'seed'")
    refused(model, with_(seed=-1), r"field 'seed' must be an integer >= 0, got -1")
    refused(model, with_(frames="all"), r"'frames' must be a list of frame indices")
    refused(model, with_(frames=meta["frames"][::-1]), r"'frames' is not increasing")
    refused(model, with_(frames=[0, meta["frame_index"]]), r"frame \d+ is not visible from frame_index")
    refused(model, with_(frames=[0, 1]), r"frame 1 is not visible from frame_index")  # fell out of the window
    refused(model, with_(frames=meta["frames"][:-1]), r"its state is \d+ bytes, \d+ expected for 8 saved frames")
    refused(model, with_(state_bytes=1), r"'state_bytes' differs from the header's")
    refused(model, with_(frame_index=2**40), r"frame_index 1099511627776 is out of range")
    refused(model, reseal(blob, raw_meta=b"{not json"), r"metadata is not valid JSON")
    refused(model, reseal(blob, raw_meta=b"[1, 2]"), r"metadata is not a JSON object")
    # The seed is the snapshot's to choose: another seed restores, and gives another video.
    other = model.session(snapshot=with_(seed=99))
    assert other.seed == 99


def test_errors_leave_everything_usable(model, blob):
    s = model.session(seed=13)
    prepare(s, "rolled")
    for bad in (blob[:-1], b"x", reseal(blob, {**meta_of(blob), "dtype": "float16"})):
        with pytest.raises(ValueError):
            model.session(snapshot=bad)
    r = model.session(snapshot=blob)
    acts = actions(3, 0)
    assert_same(run(r, acts), run(s, acts), "after refused blobs")
    with pytest.raises(ValueError, match="seed and snapshot are exclusive"):
        model.session(seed=1, snapshot=blob)
    s.close()
    with pytest.raises(RuntimeError, match="session is closed"):
        s.snapshot()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_is_always_a_clear_error(model, blob, data):
    """Truncations and bit flips anywhere: never a crash, always a ValueError naming the damage (a flip in the
    data is caught by the CRC-32, so it cannot turn into different frames)."""
    damaged = bytearray(blob)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    for _ in range(data.draw(st.integers(0 if len(damaged) < len(blob) else 1, 8), label="flips")):
        if damaged:
            at = data.draw(st.integers(0, len(damaged) - 1), label="at")
            damaged[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    if bytes(damaged) == blob:
        return  # flips that cancelled out
    with pytest.raises(ValueError, match=r"^snapshot: (empty|not an nfd_rt snapshot|truncated|has \d+ bytes|"
                                         r"format version|corrupted)"):
        model.session(snapshot=bytes(damaged))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda c: st.lists(c, max_size=4), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["architecture", "config", "weights_fingerprint", "dtype", "seed", "frame_index",
                              "frames", "state_bytes"]), value=JSON_VALUES)
def test_crafted_fields_never_crash(model, blob, field, value):
    """Any value in any metadata field, with a valid CRC: a ValueError naming the snapshot, or (a value the
    format allows, e.g. another seed) a session that steps."""
    try:
        s = model.session(snapshot=reseal(blob, {**meta_of(blob), field: value}))
    except ValueError as e:
        assert str(e).startswith("snapshot: "), e
        return
    assert np.isfinite(s.step_latent(key(0))).all()


# -- CUDA (run on a GPU machine; unverified until one runs it) ------------------------------------------------------

@pytest.mark.cuda
def test_cuda_snapshots(model_path):
    """bf16 on CUDA: a restored session replays the same kernels on the same bytes, so the same bits as a fork;
    a blob crosses devices through host memory unchanged (CPU float32 -> CUDA float32 -> the same blob), and
    another dtype is refused."""
    bf16 = nfd_rt.Model(model_path, device="cuda", dtype="bfloat16")
    s = bf16.session(seed=6)
    for i in range(2 * (CFG.window + CFG.sink_frames) + 3):
        s.step_latent(key(i))
    blob = s.snapshot()
    info = nfd_rt.snapshot_info(blob)
    assert info["dtype"] == "bfloat16" and info["state_bytes"] == state_bytes(CFG, CFG.sink_frames + CFG.window, 2)
    fork, restored = s.fork(), bf16.session(snapshot=blob)
    for i in range(2 * CFG.window + 3):
        np.testing.assert_array_equal(restored.step(key(i)), fork.step(key(i)), err_msg=f"frame {i}")
    cpu = nfd_rt.Model(model_path, dtype="float32").session(seed=6)  # "auto" is bf16 on a CPU with AMX/AVX512-BF16
    run(cpu, actions(CFG.window + 4, 1))
    cpu_blob = cpu.snapshot()
    with pytest.raises(ValueError, match="taken from a float32 session, this session computes in bfloat16"):
        bf16.session(snapshot=cpu_blob)
    on_cuda = nfd_rt.Model(model_path, device="cuda", dtype="float32").session(snapshot=cpu_blob)
    assert on_cuda.snapshot() == cpu_blob
    assert np.isfinite(on_cuda.step_latent(key(0))).all()


# -- the size of a snapshot per config (docs/snapshots.md) ----------------------------------------------------------

def test_sizes_in_the_docs_follow_the_formula():
    """docs/snapshots.md's table: the state of a full cache per named config, from the formula this file checks
    against real blobs above."""
    import os
    import re

    from nfd_testfiles import REPO

    text = open(os.path.join(REPO, "docs", "snapshots.md")).read()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d+) \| ([\d,]+) \| ([\d,]+) \|", text, re.M)
    assert {r[0] for r in rows} == {"tiny", "nfd-130m", "nfd-310m"}, rows
    for name, frames, fp32, bf16 in rows:
        cfg = configs.get(name)
        assert int(frames) == cfg.sink_frames + cfg.window
        assert int(fp32.replace(",", "")) == state_bytes(cfg, int(frames), 4), name
        assert int(bf16.replace(",", "")) == state_bytes(cfg, int(frames), 2), name
