"""nfd_rt.gym: Gymnasium's own checkers and reference vector env are the oracle (docs/gym.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium", reason="needs gymnasium (the `gym` extra)")

import nfd_rt  # noqa: E402
import nfd_rt.gym as G  # noqa: E402
from gymnasium import spaces  # noqa: E402
from gymnasium.utils.env_checker import check_env, data_equivalence  # noqa: E402
from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402
from nfd_rt.demo import MODEL_PATH, game  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return nfd_rt.Model(MODEL_PATH, threads=1)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The demo weights under another path: a model the env knows nothing about (no Gridworld defaults)."""
    path = tmp_path_factory.mktemp("plain") / "plain.nfd"
    shutil.copy(MODEL_PATH, path)
    return nfd_rt.Model(path, threads=1)


def checked(**kwargs):
    """check_env on the registered env made with `kwargs`, failing on any warning it raises about it."""
    env = gymnasium.make(G.ENV_ID, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # with its spec: also the render modes and close() twice
    assert [str(w.message) for w in caught] == []
    return env.unwrapped


def up_and_down(obs, action, next_obs):  # a termination rule random MultiBinary actions meet now and then
    return bool(action[0] and action[1])


def brightness(obs, action, next_obs):
    return float(next_obs.mean()) / 255.0


# -- packaging --------------------------------------------------------------------------------------------------------
def test_import_nfd_rt_does_not_import_gymnasium():
    code = "import sys, nfd_rt, nfd_rt.session; nfd_rt.Model; print('gymnasium' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_without_gymnasium_names_the_extra():
    code = "import sys; sys.modules['gymnasium'] = None; import nfd_rt.gym"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: nfd_rt.gym needs Gymnasium 1.x: pip install 'nfd_rt[gym]'"), last


def test_model_is_shared_not_copied(demo):
    """gymnasium.make deep-copies its arguments (spec.make, check_env); a Model is immutable, so a copy is itself."""
    import copy

    assert copy.deepcopy({"model": demo})["model"] is demo and copy.copy(demo) is demo


# -- Gymnasium's checkers -------------------------------------------------------------------------------------------
def test_check_env_on_the_registered_demo_env():
    env = checked()  # no model: the shipped Gridworld model
    assert env.action_space == spaces.MultiBinary(4)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    env.close()


def test_check_env_on_a_model_without_action_layout(plain):
    env = checked(model=plain)
    assert env.action_space == spaces.Box(-1.0, 1.0, (8,), np.float32)  # the action vector itself
    obs, _ = env.reset(seed=0)
    assert not obs.any()  # no context: a black first frame, documented
    frame, *_ = env.step(env.action_space.sample())
    assert frame.any()


def test_check_env_with_a_user_action_space(plain):
    space = spaces.Dict({"keys": spaces.MultiBinary(4), "camera": spaces.Box(-1.0, 1.0, (4,), np.float32)})

    def to_vector(a):
        return np.concatenate([a["keys"], a["camera"]]).astype(np.float32)

    checked(model=plain, action_space=space, action_map=to_vector,
            initial_frames=lambda rng: game.GridWorld(int(rng.integers(100))).render()[None])


def test_registered_ids_make_and_make_vec(demo):
    env = gymnasium.make("nfd_rt.gym:nfd_rt/World-v0", model=demo, max_episode_steps=2)
    env.reset(seed=0)
    truncated = [env.step(env.action_space.sample())[3] for _ in range(2)]
    assert truncated == [False, True]  # TimeLimit from gymnasium.make
    envs = gymnasium.make_vec(G.ENV_ID, num_envs=2, model=demo, max_episode_steps=2)
    assert isinstance(envs.unwrapped, G.VectorEnv) and envs.num_envs == 2
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    envs.reset(seed=0)
    truncated = [envs.step(envs.action_space.sample())[3].tolist() for _ in range(2)]
    assert truncated == [[False, False], [True, True]]
    env.close()
    envs.close()


# -- seeding ----------------------------------------------------------------------------------------------------------
def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    return [obs] + [env.step(a)[0] for a in actions], info


def test_same_seed_same_actions_same_frames_bitwise(demo):
    env = G.Env(demo)
    env.action_space.seed(3)
    actions = [env.action_space.sample() for _ in range(6)]
    a, info = rollout(env, 7, actions)
    env.reset()  # another episode in between, with its own noise seed
    env.step(actions[0])
    b, _ = rollout(env, 7, actions)
    assert info == {"philox_seed": 7}
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c, _ = rollout(G.Env(demo), 7, actions)  # a fresh env too
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    d, _ = rollout(env, 8, actions)
    assert not np.array_equal(a[-1], d[-1])


def test_seed_is_the_sessions_philox_seed(demo):
    """reset(seed=s) plays the same frames as a session of seed s from the same room and key vectors."""
    env = G.Env(demo)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(4)]
    frames, _ = rollout(env, 11, actions)
    s = demo.session(seed=11)
    s.reset(frames=frames[0][None])
    to_vector = G.gridworld_actions()[1]
    assert all(np.array_equal(s.step(to_vector(a)), f) for a, f in zip(actions, frames[1:]))
    room = game.GridWorld(int(np.random.default_rng(11).integers(2**31))).render()
    assert np.array_equal(frames[0], room)  # the start room comes from Gymnasium's RNG, seeded with 11


def test_unseeded_resets_draw_from_the_seeded_rng(demo):
    env = G.Env(demo)
    env.reset(seed=5)
    first = [env.reset() for _ in range(3)]
    env.reset(seed=5)
    again = [env.reset() for _ in range(3)]
    assert data_equivalence(first, again, exact=True)
    seeds = [info["philox_seed"] for _, info in first]
    assert len(set(seeds)) == 3  # each episode its own noise


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_bad_seed(demo, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        G.Env(demo).reset(seed=seed)


# -- reset options, render, closing ---------------------------------------------------------------------------------
def test_reset_from_given_frames_and_actions(demo):
    env = G.Env(demo)
    frames, actions = game.rollout(4, 3)
    obs, _ = env.reset(seed=1, options={"frames": frames, "actions": actions})
    assert np.array_equal(obs, frames[-1]) and obs is not frames[-1]
    assert env.session.frame_index == 3
    s = demo.session(seed=1)
    s.reset(frames=frames, actions=actions)
    assert np.array_equal(env.step(np.array([0, 0, 0, 1], np.int8))[0], s.step(game.action_vector("right")))


def test_render_returns_the_last_frame(demo):
    env = G.Env(demo)
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs)
    obs, *_ = env.step(np.ones(4, np.int8))
    frame = env.render()
    assert np.array_equal(frame, obs)
    frame[:] = 0  # a copy: the env's state is untouched
    assert np.array_equal(env.render(), obs)
    quiet = G.Env(demo, render_mode=None)
    quiet.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode=None"):
        assert quiet.render() is None


@pytest.mark.parametrize("options, message", [
    ({"frame": None}, r"unknown reset options \['frame'\]"),
    ({"frames": np.zeros((1, 32, 32, 3), np.uint8)}, r"frames must be uint8 \[T, 64, 64, 3\] for tiny"),
    ({"actions": np.zeros((1, 8), np.float32)}, r"options\['actions'\] needs options\['frames'\]"),
    ({"frames": np.zeros((2, 64, 64, 3), np.uint8), "actions": np.zeros((1, 8))}, r"actions must have shape \(2, 8\)"),
    ({"reset_mask": np.ones(1, bool)}, r"reset_mask'\] is for vector envs"),
])
def test_bad_reset_options(demo, options, message):
    with pytest.raises(ValueError, match=message):
        G.Env(demo).reset(seed=0, options=options)


def test_a_refused_reset_changes_nothing(demo):
    env = G.Env(demo)
    env.reset(seed=1)
    env.step(np.ones(4, np.int8))
    with pytest.raises(ValueError, match=r"actions must have shape \(1, 8\)"):
        env.reset(seed=2, options={"frames": np.zeros((1, 64, 64, 3), np.uint8), "actions": np.zeros(8)})
    assert env.session.seed == 1 and env.session.frame_index == 2
    envs = G.VectorEnv(2, demo)
    envs.reset(seed=1)
    with pytest.raises(ValueError, match=r"frames must have dtype uint8"):
        envs.reset(seed=5, options={"frames": np.zeros((2, 1, 64, 64, 3), np.float32)})
    assert [(s.seed, s.frame_index) for s in envs.sessions] == [(1, 1), (2, 1)]


def test_step_before_reset_and_after_close(demo):
    env = G.Env(demo)
    with pytest.raises(gymnasium.error.ResetNeeded, match=r"call reset\(\) before step\(\)"):
        env.step(np.zeros(4, np.int8))
    env.reset(seed=0)
    env.close()
    env.close()  # twice is fine
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(4, np.int8))


@pytest.mark.parametrize("kwargs, message", [
    ({"model": 3}, r"model must be an nfd_rt.Model, a .nfd path or None"),
    ({"render_mode": "human"}, r"render_mode must be 'rgb_array' or None, got 'human'"),
    ({"action_space": spaces.Discrete(5)}, r"action_space Discrete\(5\) is not a Box or MultiBinary of shape \(8,\)"),
    ({"action_map": lambda a: a}, r"action_map needs action_space"),
    ({"action_space": spaces.Discrete(5), "action_map": 1}, r"action_map must be a function"),
    ({"reward_fn": 0.5}, r"reward_fn must be a function"),
])
def test_bad_constructor_arguments(demo, kwargs, message):
    kwargs.setdefault("model", demo)
    with pytest.raises(ValueError, match=message):
        G.Env(**kwargs)


# -- actions ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action, why", [
    (np.zeros(3, np.int8), r": its shape is \(3,\), the space's is \(4,\)"),
    (np.array([0, 2, 0, 0]), r": entries must be 0 or 1"),
    ("up", r": its shape is \(\), the space's is \(4,\)"),
])
def test_bad_action_names_the_space(demo, action, why):
    env = G.Env(demo)
    env.reset(seed=0)
    with pytest.raises(G.InvalidActionError, match=r"is not in the action space MultiBinary\(4\)" + why) as e:
        env.step(action)
    assert isinstance(e.value, gymnasium.error.InvalidAction) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)
    assert env.session.frame_index == 1  # nothing stepped


@pytest.mark.parametrize("action, why", [
    (np.full(8, 1.5), r": values must be in \[-1.0, 1.0\], not NaN"),
    (np.full(8, np.nan), r": values must be in \[-1.0, 1.0\], not NaN"),
    (np.zeros((2, 8)), r": its shape is \(2, 8\), the space's is \(8,\)"),
])
def test_bad_box_action(plain, action, why):
    env = G.Env(plain)
    env.reset(seed=0)
    env.step(np.zeros(8))  # float64 in range is accepted (cast to the space's float32)
    with pytest.raises(G.InvalidActionError, match=r"the action space Box\(-1.0, 1.0, \(8,\), float32\)" + why):
        env.step(action)


def test_action_map_must_return_the_model_vector(plain):
    env = G.Env(plain, action_space=spaces.Discrete(3), action_map=lambda k: np.eye(3)[k])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action_map must return a finite float vector of shape \(8,\).* got shape \(3,\)"):
        env.step(1)


# -- reward and termination -------------------------------------------------------------------------------------------
def test_reward_and_termination_are_zero_and_never_by_default(demo):
    env = G.Env(demo)
    env.reset(seed=0)
    for _ in range(3):
        _, reward, terminated, truncated, info = env.step(np.array([1, 1, 0, 0], np.int8))
        assert (reward, terminated, truncated, info) == (0.0, False, False, {})


def test_reward_and_termination_callables(demo):
    seen = []

    def reward(obs, action, next_obs):
        seen.append((obs.copy(), action.copy(), next_obs.copy()))
        return 2.5

    env = G.Env(demo, reward_fn=reward, termination_fn=up_and_down)
    obs, _ = env.reset(seed=0)
    nxt, r, terminated, *_ = env.step(np.array([1, 0, 0, 0], np.int8))
    assert (r, terminated) == (2.5, False)
    assert np.array_equal(seen[0][0], obs) and np.array_equal(seen[0][2], nxt)
    assert seen[0][1].tolist() == [1, 0, 0, 0]  # the agent's action, not the model vector
    assert env.step(np.array([1, 1, 0, 0], np.int8))[2] is True


# -- the vector env ---------------------------------------------------------------------------------------------------
def test_vector_env_matches_gymnasiums_sync_vector_env(demo):
    """NEXT_STEP autoreset, truncation, per-world seeds and infos exactly as SyncVectorEnv over single envs (frames
    within a step of rounding: a batched forward rounds differently from one session alone)."""
    kw = dict(model=demo, reward_fn=brightness, termination_fn=up_and_down)
    ours = G.VectorEnv(3, max_episode_steps=4, **kw)
    ref = SyncVectorEnv([lambda: gymnasium.wrappers.TimeLimit(G.Env(**kw), 4) for _ in range(3)])
    assert ours.single_action_space == ref.single_action_space and ours.action_space == ref.action_space
    assert ours.observation_space == ref.observation_space
    assert ours.metadata["autoreset_mode"] == ref.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    _, ia = ours.reset(seed=[4, None, 6])  # None: a seed from the OS
    assert ia["philox_seed"][0] == 4 and ia["philox_seed"][2] == 6
    a, ia = ours.reset(seed=4)
    b, ib = ref.reset(seed=4)
    assert data_equivalence(ia, ib, exact=True) and np.array_equal(a, b)
    ours.action_space.seed(1)
    events = {"terminated": 0, "truncated": 0, "reset": 0}
    for _ in range(14):
        act = ours.action_space.sample()
        assert act in ours.action_space
        oa, ra, ta, tra, ia = ours.step(act)
        ob, rb, tb, trb, ib = ref.step(act)
        assert oa in ours.observation_space
        assert np.abs(oa.astype(int) - ob).max() <= 2 and np.mean(oa != ob) < 0.01
        np.testing.assert_allclose(ra, rb, atol=1e-3)
        assert ta.tolist() == tb.tolist() and tra.tolist() == trb.tolist()
        assert data_equivalence(ia, ib, exact=True)  # the philox_seed of every world reset in this step
        events["terminated"] += ta.sum()
        events["truncated"] += (tra & ~ta).sum()
        events["reset"] += int(ia["_philox_seed"].sum()) if ia else 0
    assert min(events.values()) > 0, events  # the rollout exercised every case
    ours.close()
    ref.close()


def test_vector_env_is_one_batched_forward_a_step(demo, monkeypatch):
    calls = []

    def counting(sessions, actions):
        calls.append(len(sessions))
        return nfd_rt.step_batch(sessions, actions)

    monkeypatch.setattr(G, "step_batch", counting)
    envs = G.VectorEnv(4, demo, termination_fn=lambda o, a, n: bool(a[3]))  # "right" ends an episode
    obs0, _ = envs.reset(seed=0)
    keys = np.zeros((4, 4), np.int8)
    keys[1, 3] = keys[2, 3] = 1
    obs1, rew, term, trunc, info = envs.step(keys)
    assert calls == [4] and term.tolist() == [False, True, True, False]
    obs2, rew, term, trunc, info = envs.step(np.ones((4, 4), np.int8))  # worlds 1 and 2 reset: actions ignored
    assert calls == [4, 2]
    assert rew.tolist() == [0.0] * 4 and term.tolist() == [True, False, False, True]
    assert info["_philox_seed"].tolist() == [False, True, True, False]
    assert [envs.sessions[i].frame_index for i in range(4)] == [3, 1, 1, 3]  # 1 and 2: a fresh context frame
    for i in (1, 2):  # the reset frame: a room drawn from the world's RNG
        assert game.agent_position(obs2[i]) is not None and not np.array_equal(obs2[i], obs1[i])
    envs.step(np.zeros((4, 4), np.int8))
    assert calls == [4, 2, 2]
    envs.close()


def test_vector_env_seeds_match_single_envs(demo):
    envs = G.VectorEnv(2, demo)
    obs, info = envs.reset(seed=10)
    assert info["philox_seed"].tolist() == [10, 11]
    actions = np.array([[1, 0, 0, 0], [0, 0, 1, 1]], np.int8)
    batched = envs.step(actions)[0]
    for i in range(2):
        env = G.Env(demo)
        single, _ = env.reset(seed=10 + i)
        assert np.array_equal(single, obs[i])
        assert np.abs(env.step(actions[i])[0].astype(int) - batched[i]).max() <= 2
    envs.reset(seed=10)
    assert np.array_equal(envs.step(actions)[0], batched)  # the vector env itself is bitwise reproducible


def test_vector_reset_options_and_mask(demo):
    envs = G.VectorEnv(3, demo)
    frames, actions = game.rollout(2, 2)
    obs, _ = envs.reset(seed=0, options={"frames": frames, "actions": actions})
    assert all(np.array_equal(o, frames[-1]) for o in obs)
    rooms = np.stack([game.rollout(r, 1)[0] for r in range(3)])  # [3, 1, H, W, 3]: one context per world
    obs, _ = envs.reset(seed=0, options={"frames": rooms})
    assert np.array_equal(obs, rooms[:, -1])
    stepped, *_ = envs.step(np.zeros((3, 4), np.int8))
    mask = np.array([False, True, False])
    obs, info = envs.reset(options={"reset_mask": mask, "frames": frames})
    assert info["_philox_seed"].tolist() == mask.tolist()
    assert np.array_equal(obs[1], frames[-1]) and np.array_equal(obs[[0, 2]], stepped[[0, 2]])
    assert [s.frame_index for s in envs.sessions] == [2, 2, 2]
    with pytest.raises(ValueError, match=r"reset_mask'\] must be a bool numpy array of shape \(3,\)"):
        envs.reset(options={"reset_mask": [True, False, True]})
    with pytest.raises(ValueError, match=r"options\['frames'\] must be one array for every world or have a first axis"):
        envs.reset(options={"frames": np.zeros((2, 1, 64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"seed must be None, an integer .* or a list of 3"):
        envs.reset(seed=[1, 2])


def test_vector_bad_actions_name_the_space(demo):
    envs = G.VectorEnv(2, demo)
    envs.reset(seed=0)
    with pytest.raises(G.InvalidActionError, match=r"actions array\(\[0, 1, 0, 1\], dtype=int8\) is not in the action "
                       r"space Box\(0, 1, \(2, 4\), int8\) \(2 x MultiBinary\(4\)\): its shape is \(4,\)"):
        envs.step(np.array([0, 1, 0, 1], np.int8))
    with pytest.raises(G.InvalidActionError, match=r"\(2 x MultiBinary\(4\)\): values must be integers in \[0, 1\]"):
        envs.step(np.full((2, 4), 0.5))
    assert [s.frame_index for s in envs.sessions] == [1, 1]
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        G.VectorEnv(0, demo)
    with pytest.raises(ValueError, match="max_episode_steps must be a positive integer or None"):
        G.VectorEnv(2, demo, max_episode_steps=0)


def test_vector_env_with_a_dict_action_space(plain):
    space = spaces.Dict({"keys": spaces.MultiBinary(4), "camera": spaces.Box(-1.0, 1.0, (4,), np.float32)})
    envs = G.VectorEnv(2, plain, action_space=space,
                       action_map=lambda a: np.concatenate([a["keys"], a["camera"]]).astype(np.float32))
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    obs, *_ = envs.step(envs.action_space.sample())
    assert obs.shape == (2, 64, 64, 3) and obs.any()
    with pytest.raises(G.InvalidActionError, match=r"is not in the action space Dict\("):
        envs.step({"keys": np.zeros((2, 4), np.int8)})


def test_vector_render_and_close(demo):
    envs = G.VectorEnv(2, demo)
    obs, _ = envs.reset(seed=0)
    frames = envs.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and np.array_equal(np.stack(frames), obs)
    envs.close()
    assert envs.closed and envs.sessions == [None, None]
    with pytest.raises(gymnasium.error.ResetNeeded):
        envs.step(np.zeros((2, 4), np.int8))


# -- standard wrappers --------------------------------------------------------------------------------------------
def test_rollout_through_standard_wrappers(demo, tmp_path):
    """A random policy through frame stacking, resizing and video recording (RenderCollection + imageio: Gymnasium's
    RecordVideo needs moviepy, ResizeObservation opencv; both are tested below where installed)."""
    from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, RenderCollection, TransformObservation
    from nfd_rt.demo.video import write_video

    env = gymnasium.make(G.ENV_ID, model=demo, max_episode_steps=5)
    env = RenderCollection(env)
    half = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    env = TransformObservation(env, lambda o: o[::2, ::2], half)  # 2x down-sampling without opencv
    env = GrayscaleObservation(env)
    env = FrameStackObservation(env, 4)
    assert env.observation_space.shape == (4, 32, 32)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    done, steps = False, 0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs in env.observation_space
        done, steps = terminated or truncated, steps + 1
    assert steps == 5
    frames = env.render()
    assert len(frames) == 6 and frames[0].shape == (64, 64, 3)
    path = write_video(frames, str(tmp_path / "episode.mp4"), env.metadata["render_fps"])
    import imageio.v2 as imageio

    assert len(imageio.mimread(path)) == 6
    env.close()


def test_resize_observation(demo):
    pytest.importorskip("cv2", reason="gymnasium's ResizeObservation needs opencv (the test extra has it)")
    env = gymnasium.wrappers.ResizeObservation(G.Env(demo), (32, 32))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and env.step(env.action_space.sample())[0] in env.observation_space


def test_record_video(demo, tmp_path):
    pytest.importorskip("moviepy", reason="gymnasium's RecordVideo needs moviepy (the test extra has it)")
    env = gymnasium.wrappers.RecordVideo(G.Env(demo), str(tmp_path), episode_trigger=lambda e: True)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.close()
    assert list(tmp_path.glob("*.mp4"))


def test_vector_wrappers(demo):
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    envs = RecordEpisodeStatistics(G.VectorEnv(2, demo, max_episode_steps=2, reward_fn=lambda o, a, n: 1.0))
    envs.reset(seed=0)
    for _ in range(2):
        *_, info = envs.step(envs.action_space.sample())
    assert info["episode"]["r"].tolist() == [2.0, 2.0] and info["episode"]["l"].tolist() == [2, 2]
    envs.close()


def test_docs_examples_run():
    """docs/gym.md's quick start and reward example, run as written."""
    import os
    import re

    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "gym.md")).read()
    scope: dict = {}
    for name in ("gym-quickstart", "gym-reward"):
        m = re.search(r"<!-- test: " + name + r" -->\s*```python\n(.*?)```", text, re.S)
        assert m, f"docs/gym.md has no python block marked <!-- test: {name} -->"
        exec(compile(m.group(1), f"docs/gym.md:{name}", "exec"), scope)
    env = scope["env"]  # the reward example's env: the game's coin-seeking player in room 2, beside the real game
    room = game.GridWorld(2)
    env.reset(seed=0, options={"frames": room.render()[None]})
    rewards = []
    for _ in range(30):
        key = room.greedy_key()  # index into game.KEYS: 0 no-op, then up, down, left, right
        action = np.zeros(4, np.int8)
        if key:
            action[key - 1] = 1
        room.step(G.gridworld_actions()[1](action))
        _, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated:
            break
    assert terminated and not room.coins  # the model's frames lose their last coin when the game does
    assert sum(rewards) == 3.0  # one reward per coin
