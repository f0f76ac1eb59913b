"""Many worlds at once: one Model shared by many sessions, batched steps, fork, exact speculative sampling."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfd_rt
from nfd_rt import _core, configs
from nfd_testfiles import MICRO, random_nfd

CFG = configs.get("tiny")
A = CFG.action_dim


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("worlds") / "tiny.nfd"
    path.write_bytes(random_nfd(CFG, seed=9))
    return str(path)


@pytest.fixture(scope="module")
def model(model_path):
    return nfd_rt.Model(model_path)


def key(i: int) -> np.ndarray:
    a = np.zeros(A, np.float32)
    a[i % A] = 1.0
    return a


# -- shared weights ------------------------------------------------------------------------------------------------

def test_sessions_share_the_weights(model, model_path):
    own = nfd_rt.Session(model_path)
    sessions = [model.session(seed=i) for i in range(16)]
    per_session = sessions[0].memory_bytes()
    assert own.memory_bytes() == per_session + model.memory_bytes()  # a session of its own counts the weights
    assert per_session == sessions[0].kv_cache_bytes() + (per_session - sessions[0].kv_cache_bytes())
    total = model.memory_bytes() + sum(s.memory_bytes() for s in sessions)
    assert total == model.memory_bytes() + 16 * per_session
    assert total < 16 * own.memory_bytes() / 2  # one copy of the weights, not 16
    for s in sessions:
        s.close()
    own.close()


def test_model_outlives_its_handle(model_path):
    m = nfd_rt.Model(model_path)
    s = m.session(seed=1)
    ref = nfd_rt.Session(model_path, seed=1)
    del m
    gc.collect()  # the Python handle is gone; the session keeps the weights
    for i in range(3):
        np.testing.assert_array_equal(s.step_latent(key(i)), ref.step_latent(key(i)))


def test_model_session_equals_a_session_of_its_own(model, model_path):
    with model.session(seed=4) as a, nfd_rt.Session(model_path, seed=4) as b:
        for i in range(CFG.window + CFG.sink_frames + 3):
            np.testing.assert_array_equal(a.step(key(i)), b.step(key(i)))


# -- batched steps -------------------------------------------------------------------------------------------------

def test_batch_equals_stepping_alone(model):
    """Sessions at different points (a context frame, different lengths, different seeds) stepped as one batch
    past the window's wrap-around give each session's own frames within 1e-5."""
    rng = np.random.default_rng(0)
    batch = [model.session(seed=10 + i) for i in range(5)]
    alone = [model.session(seed=10 + i) for i in range(5)]
    ctx = rng.integers(0, 256, (1, CFG.frame_height, CFG.frame_width, 3), dtype=np.uint8)
    for s in (batch[1], alone[1]):
        s.reset(frames=ctx)
    for s in (batch[2], alone[2]):  # already a few frames in
        for i in range(3):
            s.step_latent(key(i))
    worst = 0.0
    for t in range(CFG.window + CFG.sink_frames + 4):
        acts = rng.standard_normal((5, A)).astype(np.float32)
        if t % 3 == 2:
            frames = nfd_rt.step_batch(batch, acts)
            want = np.stack([s.step(a) for s, a in zip(alone, acts)])
            assert frames.shape == (5, CFG.frame_height, CFG.frame_width, 3) and frames.dtype == np.uint8
            assert np.abs(frames.astype(int) - want.astype(int)).max() <= 1
        else:
            got = nfd_rt.step_latent_batch(batch, acts)
            want = np.stack([s.step_latent(a) for s, a in zip(alone, acts)])
            worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-5, worst
    assert [s.frame_index for s in batch] == [s.frame_index for s in alone]


def test_batch_of_one_is_plain_stepping(model):
    a, b = model.session(seed=3), model.session(seed=3)
    for i in range(4):
        np.testing.assert_array_equal(nfd_rt.step_latent_batch([a], key(i)[None])[0], b.step_latent(key(i)))


def test_batch_bad_input_is_clear_and_harmless(model, model_path):
    s1, s2 = model.session(seed=1), model.session(seed=2)
    other = nfd_rt.Session(model_path)
    spec = model.session(speculate=2)
    acts = np.zeros((2, A), np.float32)
    cases = [
        (([s1, other], acts), "share a Model"),
        (([s1, s1], acts), "appears twice"),
        (([s1, spec], acts), "speculates"),
        (([s1, s2], np.zeros((3, A), np.float32)), r"actions must have shape \(2, 8\)"),
        (([s1, s2], np.full((2, A), np.nan, np.float32)), "NaN"),
        (([], np.zeros((0, A))), "at least one session"),
        (([s1, "s2"], acts), "not an nfd_rt.Session"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            nfd_rt.step_batch(*args)
    s2.close()
    with pytest.raises(RuntimeError, match="session is closed"):
        nfd_rt.step_batch([s1, s2], acts)
    assert s1.frame_index == 0  # nothing happened to the others
    s1.step(key(0))
    assert s1.frame_index == 1


def test_batches_from_threads(model):
    """Two threads batching their own sessions of one model at once (the model's batch buffers are shared)."""
    groups = [[model.session(seed=20 + 3 * g + i) for i in range(3)] for g in range(2)]
    solo = [[model.session(seed=20 + 3 * g + i) for i in range(3)] for g in range(2)]
    out: dict[int, list] = {0: [], 1: []}

    def run(g):
        for t in range(6):
            out[g].append(nfd_rt.step_latent_batch(groups[g], np.stack([key(t + i) for i in range(3)])))

    threads = [threading.Thread(target=run, args=(g,)) for g in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in range(2):
        for t in range(6):
            want = np.stack([s.step_latent(key(t + i)) for i, s in enumerate(solo[g])])
            assert np.abs(out[g][t] - want).max() <= 1e-5


# -- fork ----------------------------------------------------------------------------------------------------------

def test_fork_is_independent_and_equals_a_replay(model):
    history = [key(i) for i in range(CFG.window + 3)]
    s = model.session(seed=7)
    s.reset(frames=np.full((1, CFG.frame_height, CFG.frame_width, 3), 90, np.uint8))
    for a in history:
        s.step_latent(a)
    f = s.fork()
    assert f.frame_index == s.frame_index and f.seed == s.seed
    futures_a = [key(1), key(1), key(5)]
    futures_b = [key(2), key(6), key(6)]
    got_f = [f.step_latent(a) for a in futures_a]
    got_s = [s.step_latent(a) for a in futures_b]  # stepping one never changes the other
    for future, got in ((futures_a, got_f), (futures_b, got_s)):
        replay = model.session(seed=7)
        replay.reset(frames=np.full((1, CFG.frame_height, CFG.frame_width, 3), 90, np.uint8))
        for a in history:
            replay.step_latent(a)
        for a, g in zip(future, got):
            np.testing.assert_array_equal(replay.step_latent(a), g)


def test_forks_batched_like_a_planner(model):
    """A planner scores N action sequences from one state: forks of one session, stepped as a batch."""
    root = model.session(seed=8)
    for i in range(4):
        root.step_latent(key(i))
    plans = [[key(p)] * 3 for p in range(4)]
    forks = [root.fork() for _ in plans]
    for t in range(3):
        got = nfd_rt.step_latent_batch(forks, np.stack([plan[t] for plan in plans]))
        for p, plan in enumerate(plans):
            single = root.fork()
            for a in plan[: t + 1]:
                z = single.step_latent(a)
            assert np.abs(got[p] - z).max() <= 1e-5


# -- exact speculation ---------------------------------------------------------------------------------------------

def run_pair(model, actions, k, pauses=(), decode_every=2):
    spec = model.session(seed=5, speculate=k)
    plain = model.session(seed=5)
    for i, a in enumerate(actions):
        if i in pauses:  # the player looks at the frame until the worker has run ahead as far as it can
            assert spec.wait_speculation() == (k if i > 0 else 0)
        if i % decode_every == 0:
            np.testing.assert_array_equal(spec.step(a), plain.step(a), err_msg=f"frame {i}")
        else:
            np.testing.assert_array_equal(spec.step_latent(a), plain.step_latent(a), err_msg=f"frame {i}")
        assert spec.frame_index == plain.frame_index == i + 1
    return spec.speculation_stats()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_exact_speculation_is_bitwise_plain_stepping(model, data):
    """Any sequence of repeats and changes (a change can land on any position of the frames ahead, and the runs
    cross the ring's wrap-around): the same bits as plain stepping."""
    k = data.draw(st.integers(1, 4), label="speculate")
    n = data.draw(st.integers(CFG.window + CFG.sink_frames + k + 2, 30), label="frames")
    keys = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n), label="keys")
    pauses = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n), label="pauses"))
    stats = run_pair(model, [key(c) for c in keys], k, pauses)
    assert stats["served"] <= n


def test_speculation_serves_repeats_and_counts(model):
    actions = [key(0)] * 10 + [key(1)] * 10
    pauses = set(range(20))  # a player who looks at each frame long enough for the worker to run 3 frames ahead
    stats = run_pair(model, actions, 3, pauses, decode_every=1)
    # All but the first frame of each run of 10 come from speculation; the 3 frames ahead under key 0 are thrown
    # away when key 1 comes.
    assert stats == {"served": 18, "discarded": 3}, stats


def test_speculation_survives_reset_fork_and_decode(model):
    s = model.session(seed=6, speculate=2)
    plain = model.session(seed=6)
    for i in range(5):
        np.testing.assert_array_equal(s.step(key(0)), plain.step(key(0)))
    assert s.wait_speculation() == 2
    z = plain.step_latent(key(0))
    np.testing.assert_array_equal(s.decode(z), plain.decode(z))  # decode while frames are ahead: no state change
    np.testing.assert_array_equal(s.step_latent(key(0)), z)
    f = s.fork()  # the fork continues from the served frame, not from the frames ahead
    np.testing.assert_array_equal(f.step_latent(key(3)), plain.fork().step_latent(key(3)))
    s.reset()
    plain.reset()
    for i in range(4):
        np.testing.assert_array_equal(s.step_latent(key(i % 2)), plain.step_latent(key(i % 2)))
    s.close()  # stops the worker


def test_speculation_arguments(model, model_path):
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(ValueError, match="speculate must be"):
            model.session(speculate=bad)
    with pytest.raises(ValueError, match="speculate_mode must be one of"):
        nfd_rt.Session(model_path, speculate=2, speculate_mode="eager")


def test_micro_batch_and_speculation(tmp_path):
    """The smallest config too (a 1-layer DiT, window 2)."""
    path = tmp_path / "micro.nfd"
    path.write_bytes(random_nfd(MICRO))
    m = nfd_rt.Model(path)
    a, b = m.session(seed=1), m.session(seed=2)
    sa, sb = m.session(seed=1), m.session(seed=2, speculate=3)
    for t in range(8):
        acts = np.eye(MICRO.action_dim, dtype=np.float32)[[t % 3, 0]]
        got = nfd_rt.step_latent_batch([a, b], acts)
        assert np.abs(got[0] - sa.step_latent(acts[0])).max() <= 1e-5
        assert np.abs(got[1] - sb.step_latent(acts[1])).max() <= 1e-5


# -- parallel speculation ------------------------------------------------------------------------------------------

def test_parallel_speculation_of_one_frame_is_plain_stepping(model):
    s, plain = model.session(seed=2, speculate=1, speculate_mode="parallel"), model.session(seed=2)
    for i in range(CFG.window + 4):
        np.testing.assert_array_equal(s.step_latent(key(i // 3)), plain.step_latent(key(i // 3)))


def test_parallel_speculation_serves_the_group_and_rolls_back(model):
    k = 3
    s, plain = model.session(seed=2, speculate=k, speculate_mode="parallel"), model.session(seed=2)
    first = s.step(key(0))
    np.testing.assert_array_equal(first, plain.step(key(0)))  # frame 0 of a group sees what plain stepping sees
    assert s.frame_index == 1
    for _ in range(k - 1):
        s.step(key(0))  # served from the group
    assert s.speculation_stats() == {"served": k - 1, "discarded": 0}
    s.step(key(0))  # a new group
    s.step(key(4))  # the action changed: the group's other k - 1 frames go
    assert s.speculation_stats() == {"served": k - 1, "discarded": k - 1}
    assert s.frame_index == k + 2
    # Groups and rollbacks across the ring's wrap-around keep producing sane frames.
    for i in range(2 * (CFG.window + CFG.sink_frames)):
        z = s.step_latent(key(i // 4))
        assert np.isfinite(z).all()


# -- the same machinery on CUDA (run on a GPU machine; the CPU oracle above fixes the semantics) -----------------

@pytest.fixture(scope="module")
def cuda_model(model_path):
    return nfd_rt.Model(model_path, device="cuda", dtype="bfloat16")


@pytest.mark.cuda
def test_cuda_batch_equals_stepping_alone(cuda_model):
    """bf16 on CUDA: a batched GEMM over 4 sessions' rows may round differently from 4 single GEMMs, so within
    bf16 tolerance, past the window's wrap-around."""
    rng = np.random.default_rng(1)
    batch = [cuda_model.session(seed=20 + i) for i in range(4)]
    alone = [cuda_model.session(seed=20 + i) for i in range(4)]
    worst = 0.0
    for t in range(CFG.window + CFG.sink_frames + 3):
        acts = rng.standard_normal((4, A)).astype(np.float32)
        got = nfd_rt.step_latent_batch(batch, acts)
        want = np.stack([s.step_latent(a) for s, a in zip(alone, acts)])
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"cuda bf16 batch of 4 vs alone: max latent difference {worst:.3g}")
    assert worst <= 0.1, worst


@pytest.mark.cuda
def test_cuda_fork_and_exact_speculation_are_bitwise(cuda_model):
    """Fork copies the device cache; exact speculation replays the same kernels on the same shapes: same bits."""
    s = cuda_model.session(seed=6)
    for i in range(CFG.window + 2):
        s.step_latent(key(i))
    f, replay = s.fork(), s.fork()
    for i in range(4):
        np.testing.assert_array_equal(f.step_latent(key(1)), replay.step_latent(key(1)))
    spec, plain = cuda_model.session(seed=5, speculate=3), cuda_model.session(seed=5)
    for i, c in enumerate([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 0, 1, 1, 1, 1, 1, 1]):
        if i % 4 == 1:
            spec.wait_speculation()  # let the worker run ahead
        np.testing.assert_array_equal(spec.step(key(c)), plain.step(key(c)), err_msg=f"frame {i}")
    assert spec.speculation_stats()["served"] > 0
