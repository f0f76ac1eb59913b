"""Gymnasium 1.x environments over nfd_rt sessions: a world model as a simulator for agents (docs/gym.md).

    import gymnasium, nfd_rt.gym
    env = gymnasium.make("nfd_rt/World-v0")                     # the shipped Gridworld model by default
    envs = gymnasium.make_vec("nfd_rt/World-v0", num_envs=16)   # one batched forward a step

`Env` runs one session; `VectorEnv` runs `num_envs` sessions of one shared `nfd_rt.Model` and steps them with one
`nfd_rt.step_batch` call. Observations are the model's frames (uint8 [H, W, 3]). A world model predicts frames,
not rewards: the reward is 0.0 and an episode never terminates unless `reward_fn` / `termination_fn` say
otherwise. Needs the `gym` extra: pip install 'nfd_rt[gym]'.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.utils import seeding
    from gymnasium.vector.utils import batch_space, iterate
    from gymnasium.vector.vector_env import AutoresetMode
except ImportError as e:
    raise ImportError(f"nfd_rt.gym needs Gymnasium 1.x: pip install 'nfd_rt[gym]' ({e})") from None
if int(gymnasium.__version__.split(".")[0]) < 1:
    raise ImportError(f"nfd_rt.gym needs Gymnasium 1.x, found {gymnasium.__version__}: pip install 'nfd_rt[gym]'")

from . import _checks
from .session import Model, Session, step_batch

__all__ = ["ENV_ID", "Env", "VectorEnv", "InvalidActionError", "gridworld_actions"]

ENV_ID = "nfd_rt/World-v0"
RENDER_FPS = 15  # the speed `nfd-rt play` shows the Gridworld demo at; RecordVideo writes videos at this rate
PHILOX_SEEDS = 2**63  # seeds drawn from the Gymnasium RNG for resets without a seed


class InvalidActionError(gymnasium.error.InvalidAction, ValueError):
    """An action outside the environment's action space (also a ValueError, like every nfd_rt input error)."""


# -- action spaces ------------------------------------------------------------------------------------------------
GRIDWORLD_KEYS = ("up", "down", "left", "right")


def gridworld_actions(action_dim: int = 8) -> tuple[spaces.Space, Callable[[Any], np.ndarray]]:
    """The shipped Gridworld models' natural action space: `MultiBinary(4)`, one bit per arrow key (up, down,
    left, right; several may be held), and the map to the model's multi-hot vector (dims 0-3, the rest 0)."""

    def to_vector(keys: Any) -> np.ndarray:
        v = np.zeros(action_dim, np.float32)
        v[:len(GRIDWORLD_KEYS)] = keys
        return v

    return spaces.MultiBinary(len(GRIDWORLD_KEYS)), to_vector


def _action_setup(cfg, demo: bool, action_space: Any, action_map: Any) -> tuple[spaces.Space, Callable]:
    A = cfg.action_dim
    if action_map is not None and not callable(action_map):
        raise ValueError(f"action_map must be a function from an action to a float vector of {A}, "
                         f"got {type(action_map).__name__}")
    if action_space is None:
        if action_map is not None:
            raise ValueError("action_map needs action_space: the Gymnasium space whose samples it maps")
        if demo:
            return gridworld_actions(A)
        return spaces.Box(-1.0, 1.0, (A,), np.float32), _identity
    if not isinstance(action_space, spaces.Space):
        raise ValueError(f"action_space must be a gymnasium.spaces.Space, got {type(action_space).__name__}")
    if action_map is None:
        if not isinstance(action_space, (spaces.Box, spaces.MultiBinary)) or action_space.shape != (A,):
            raise ValueError(f"action_space {action_space} is not a Box or MultiBinary of shape ({A},) (the "
                             f"model's action_dim): pass action_map, a function from its samples to float vectors "
                             f"of {A}")
        return action_space, _identity
    return action_space, action_map


def _identity(action: Any) -> np.ndarray:
    return np.asarray(action, np.float32)


def _show(x: Any) -> str:
    """A one-line picture of a value for an error message."""
    if isinstance(x, np.ndarray):
        if x.ndim <= 1 and x.size <= 16:
            return np.array_repr(x, max_line_width=10**6)
        return f"array of shape {x.shape} ({x.dtype})"
    text = " ".join(repr(x).split())
    return text if len(text) <= 200 else text[:200] + "..."


def _check_action(space: spaces.Space, action: Any, what: str = "action", name: str | None = None) -> Any:
    """`action` if it is in `space`, else InvalidActionError naming the space (`name` when given) and what is wrong.
    Numeric arrays are cast to a Box's dtype first when no value changes (any number to a float Box)."""
    a = action
    if isinstance(space, spaces.Box) and not isinstance(a, dict):
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError):  # ragged nesting
            arr = None
        if arr is not None and arr.dtype.kind in "fiub":
            cast = arr.astype(space.dtype)
            if space.dtype.kind == "f" or np.array_equal(cast, arr):
                a = cast
    if space.contains(a):
        return a
    why = ""
    shape = getattr(space, "shape", None)
    try:
        got = np.shape(a)
    except (ValueError, TypeError):
        got = None
    if shape is not None and got is not None and tuple(got) != tuple(shape):
        why = f": its shape is {tuple(got)}, the space's is {tuple(shape)}"
    elif isinstance(space, spaces.Box):
        why = (f": values must be {'integers ' if space.dtype.kind in 'iu' else ''}in "
               f"[{space.low.min()}, {space.high.max()}]" + ("" if space.dtype.kind in "iu" else ", not NaN"))
    elif isinstance(space, spaces.MultiBinary):
        why = ": entries must be 0 or 1"
    raise InvalidActionError(f"{what} {_show(action)} is not in the action space {name or space}{why}")


# -- what Env and VectorEnv share -----------------------------------------------------------------------------------
def _is_demo(path: str) -> bool:
    from .demo import MODELS

    for p in MODELS.values():
        try:
            if os.path.samefile(path, p):
                return True
        except OSError:
            pass
    return False


class _World:
    """The model, spaces and user functions of an environment; sessions are opened, reset and scored here."""

    def __init__(self, model, action_space, action_map, reward_fn, termination_fn, initial_frames, render_mode,
                 device, dtype, threads):
        if model is None:
            from .demo import MODEL_PATH

            model = MODEL_PATH
        if isinstance(model, (str, os.PathLike)):
            model = Model(model, device=device, dtype=dtype, threads=threads)
        if not isinstance(model, Model):
            raise ValueError(f"model must be an nfd_rt.Model, a .nfd path or None (the shipped demo model), "
                             f"got {type(model).__name__}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        for name, fn in (("reward_fn", reward_fn), ("termination_fn", termination_fn)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be a function (obs, action, next_obs) -> value, got {type(fn).__name__}")
        self.model = model
        self.cfg = cfg = model.config
        demo = _is_demo(model.path)
        self.action_space, self.action_map = _action_setup(cfg, demo, action_space, action_map)
        self.observation_space = spaces.Box(0, 255, (cfg.frame_height, cfg.frame_width, 3), np.uint8)
        self.reward_fn, self.termination_fn = reward_fn, termination_fn
        if initial_frames is None and demo:
            initial_frames = _gridworld_room
        if initial_frames is not None and not callable(initial_frames):
            initial_frames = _checks.frames(initial_frames, cfg)  # checked once, used for every reset
        self.initial_frames = initial_frames
        self.render_mode = render_mode

    def open(self, seed: int, old: Session | None) -> Session:
        """A session with Philox seed `seed`: `old` when it has that seed already (reset clears it), else new."""
        if old is not None and old.seed == seed:
            return old
        if old is not None:
            old.close()
        return self.model.session(seed=seed)

    def context(self, frames: Any, actions: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """Checked reset options: (frames uint8 [T, H, W, 3], actions float32 [T, A]), or None when not given."""
        if frames is None:
            if actions is not None:
                raise ValueError("options['actions'] needs options['frames']: one action per context frame")
            return None
        f = _checks.frames(frames, self.cfg)
        return f, _checks.actions(actions, f.shape[0], self.cfg)

    def start(self, session: Session, rng: np.random.Generator, context: tuple | None) -> np.ndarray:
        """Reset `session` to `context` (else `initial_frames`); returns the observation: the last context frame,
        a black frame when there is none."""
        if context is None and self.initial_frames is not None:
            frames = self.initial_frames(rng) if callable(self.initial_frames) else self.initial_frames
            context = self.context(frames, None)
        if context is None or len(context[0]) == 0:
            session.reset()
            return np.zeros(self.observation_space.shape, np.uint8)
        session.reset(frames=context[0], actions=context[1])
        return context[0][-1].copy()

    def vector(self, action: Any) -> np.ndarray:
        """The model's float32 [action_dim] for an action of the space."""
        v = np.asarray(self.action_map(action), np.float32)
        if v.shape != (self.cfg.action_dim,) or not np.all(np.isfinite(v)):
            raise ValueError(f"action_map must return a finite float vector of shape ({self.cfg.action_dim},) (the "
                             f"model's action_dim), got shape {v.shape} for action {_show(action)}")
        return v

    def outcome(self, obs: np.ndarray, action: Any, next_obs: np.ndarray) -> tuple[float, bool]:
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(obs, action, next_obs))
        terminated = False if self.termination_fn is None else bool(self.termination_fn(obs, action, next_obs))
        return reward, terminated


def _gridworld_room(rng: np.random.Generator) -> np.ndarray:
    """The demo model's default start: a random Gridworld room (its first frame), from the env's RNG."""
    from .demo.game import GridWorld

    return GridWorld(int(rng.integers(2**31))).render()[None]


def _philox_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64) (it is also the Philox noise seed), got {seed!r}")
    return int(seed)


def _options(options: Any) -> tuple[Any, Any]:
    if options is None:
        return None, None
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    unknown = set(options) - {"frames", "actions", "reset_mask"}
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; known: 'frames', 'actions' "
                         "(and 'reset_mask' for a vector env)")
    return options.get("frames"), options.get("actions")


_DOC_ARGS = """
    Args:
        model: an `nfd_rt.Model`, a `.nfd` path, or None for the shipped Gridworld demo model.
        action_space: the agent's Gymnasium space. Default: `MultiBinary(4)` (the arrow keys) for the Gridworld
            models, else `Box(-1, 1, (action_dim,), float32)`, the model's action vector itself.
        action_map: a function from a sample of `action_space` to the model's float vector [action_dim]; not
            needed when `action_space` is a Box or MultiBinary of shape (action_dim,).
        reward_fn, termination_fn: functions (obs, action, next_obs) -> float / bool, called after every step
            with the previous frame, the agent's action and the new frame. Default: reward 0.0, never terminates.
        initial_frames: the context a reset starts from when `options` gives no frames: uint8 [T, H, W, 3], or a
            function of the env's `np_random` returning them. Default: a random Gridworld room for the demo
            models, else no context (the first observation is a black frame).
        render_mode: "rgb_array" (render() returns the last frame) or None.
        device, dtype, threads: how to load `model` when it is a path or None.
"""


class Env(gymnasium.Env):
    __doc__ = ("""One world of an NFD world model as a Gymnasium environment: observations are its frames (uint8
    [H, W, 3]), actions go through `action_space` / `action_map` to the model's action vector.

    `reset(seed=s)` seeds Gymnasium's RNG and makes s the session's Philox noise seed, so the same seed and the
    same actions give the same frames (bitwise on the CPU); `reset()` draws a new noise seed from the RNG.
    `reset(options={"frames": uint8 [T, H, W, 3], "actions": float [T, action_dim]})` starts from given context
    frames (with the actions that led to them, zeros when omitted); the observation is the last of them.
""" + _DOC_ARGS)

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}

    def __init__(self, model: Model | str | os.PathLike | None = None, *, action_space: spaces.Space | None = None,
                 action_map: Callable[[Any], Any] | None = None, reward_fn: Callable | None = None,
                 termination_fn: Callable | None = None, initial_frames: Any = None,
                 render_mode: str | None = "rgb_array", device: str = "cpu", dtype: str = "auto",
                 threads: int = 0):
        self._world = _World(model, action_space, action_map, reward_fn, termination_fn, initial_frames, render_mode,
                             device, dtype, threads)
        self.model = self._world.model
        self.action_space = self._world.action_space
        self.observation_space = self._world.observation_space
        self.render_mode = render_mode
        self._session: Session | None = None
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        philox = None if seed is None else _philox_seed(seed)
        if options and "reset_mask" in options:
            raise ValueError("options['reset_mask'] is for vector envs; a single env always resets")
        context = self._world.context(*_options(options))  # checked before anything changes
        super().reset(seed=seed)
        if philox is None:
            philox = int(self.np_random.integers(PHILOX_SEEDS))
        self._session = self._world.open(philox, self._session)
        self._frame = self._world.start(self._session, self.np_random, context)
        return self._frame.copy(), {"philox_seed": philox}

    def step(self, action: Any):
        if self._session is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        action = _check_action(self.action_space, action)
        frame = self._session.step(self._world.vector(action))
        reward, terminated = self._world.outcome(self._frame, action, frame)
        self._frame = frame
        return frame.copy(), reward, terminated, False, {}

    def render(self):
        if self.render_mode is None:
            gymnasium.logger.warn("render() was called with render_mode=None: nothing to render")
            return None
        return None if self._frame is None else self._frame.copy()

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def session(self) -> Session | None:
        """The session of the current episode (None before the first reset)."""
        return self._session


class VectorEnv(gymnasium.vector.VectorEnv):
    __doc__ = ("""`num_envs` worlds of one shared `nfd_rt.Model`, stepped together: each `step()` is one
    `nfd_rt.step_batch` call (one batched forward over every world that is not being reset).

    Autoreset: `AutoresetMode.NEXT_STEP` (Gymnasium's default, as in `SyncVectorEnv`): the step after a world
    terminated or was truncated resets it (its action is ignored, reward 0, not terminated or truncated), the
    others step. `max_episode_steps` truncates an episode after that many steps (None: never).

    Seeds: `reset(seed=s)` seeds world i with s + i, `reset(seed=[s0, s1, ...])` one seed each (None: from the
    OS); each world has its own RNG and Philox seed, as `Env.reset(seed=s_i)`. Reset options: "frames" uint8
    [T, H, W, 3] for every world or [num_envs, T, H, W, 3], "actions" [T, A] or [num_envs, T, A], "reset_mask"
    bool [num_envs] to reset only some worlds. Autoresets start from `initial_frames`.
""" + _DOC_ARGS)

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, model: Model | str | os.PathLike | None = None, *,
                 max_episode_steps: int | None = None, action_space: spaces.Space | None = None,
                 action_map: Callable[[Any], Any] | None = None, reward_fn: Callable | None = None,
                 termination_fn: Callable | None = None, initial_frames: Any = None,
                 render_mode: str | None = "rgb_array", device: str = "cpu", dtype: str = "auto",
                 threads: int = 0):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if max_episode_steps is not None and (isinstance(max_episode_steps, bool) or not isinstance(
                max_episode_steps, (int, np.integer)) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}")
        self._world = _World(model, action_space, action_map, reward_fn, termination_fn, initial_frames, render_mode,
                             device, dtype, threads)
        self.model = self._world.model
        self.num_envs = n = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.single_observation_space = self._world.observation_space
        self.single_action_space = self._world.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.sessions: list[Session | None] = [None] * n
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._rng_seeds: list[int | None] = [None] * n
        self._frames = np.zeros((n, *self.single_observation_space.shape), np.uint8)
        self._steps = np.zeros(n, np.int64)
        self._autoreset = np.zeros(n, bool)

    # Like SyncVectorEnv: each world has its own RNG.
    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        return tuple(self._rng(i) for i in range(self.num_envs))

    @property
    def np_random_seed(self) -> tuple[int, ...]:
        self.np_random  # noqa: B018 - creates the RNGs not made yet
        return tuple(self._rng_seeds)

    def _rng(self, i: int) -> np.random.Generator:
        if self._rngs[i] is None:
            self._rngs[i], self._rng_seeds[i] = seeding.np_random()
        return self._rngs[i]

    def _reset_world(self, i: int, seed: int | None, context: tuple | None) -> dict:
        if seed is not None:
            self._rngs[i], self._rng_seeds[i] = seeding.np_random(seed)
            philox = seed
        else:
            philox = int(self._rng(i).integers(PHILOX_SEEDS))
        self.sessions[i] = self._world.open(philox, self.sessions[i])
        self._frames[i] = self._world.start(self.sessions[i], self._rngs[i], context)
        self._steps[i] = 0
        self._autoreset[i] = False
        return {"philox_seed": philox}

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        n = self.num_envs
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            seeds = [int(seed) + i for i in range(n)]
        elif isinstance(seed, (list, tuple)) and len(seed) == n:
            seeds = list(seed)
        else:
            raise ValueError(f"seed must be None, an integer (world i gets seed + i) or a list of {n} integers or "
                             f"None, got {seed!r}")
        seeds = [None if s is None else _philox_seed(s) for s in seeds]
        frames, actions = _options(options)
        mask = self._reset_mask(options)
        frames = self._per_world(frames, 5, "frames")
        actions = self._per_world(actions, 3, "actions")
        contexts = [self._world.context(f, a) for f, a in zip(frames, actions)]  # checked before any world resets
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(mask):
            infos = self._add_info(infos, self._reset_world(i, seeds[i], contexts[i]), i)
        return self._frames.copy(), infos

    def _reset_mask(self, options: dict | None) -> np.ndarray:
        if not options or "reset_mask" not in options:
            return np.ones(self.num_envs, bool)
        m = options["reset_mask"]
        if not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.shape != (self.num_envs,) or not m.any():
            raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},) with at "
                             f"least one True, got {_show(m)}")
        return m

    def _per_world(self, x: Any, ndim: int, what: str) -> list:
        """One entry per world: `x` itself when it is shared, x[i] when it has a leading num_envs axis."""
        if x is None:
            return [None] * self.num_envs
        a = _checks._as_numpy(x, f"options['{what}']")
        if a.ndim < ndim:
            return [a] * self.num_envs
        if a.ndim > ndim or a.shape[0] != self.num_envs:
            raise ValueError(f"options['{what}'] must be one array for every world or have a first axis of "
                             f"num_envs={self.num_envs}, got shape {a.shape}")
        return list(a)

    def step(self, actions: Any):
        if any(s is None for s in self.sessions):
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        actions = _check_action(self.action_space, actions, "actions",
                                f"{self.action_space} ({self.num_envs} x {self.single_action_space})")
        per_world = list(iterate(self.action_space, actions))
        stepping = np.flatnonzero(~self._autoreset)
        resetting = np.flatnonzero(self._autoreset)
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        if len(stepping):
            vectors = np.stack([self._world.vector(per_world[i]) for i in stepping])
            frames = step_batch([self.sessions[i] for i in stepping], vectors)  # one batched forward
            for k, i in enumerate(stepping):
                rewards[i], terminated[i] = self._world.outcome(self._frames[i], per_world[i], frames[k])
                self._frames[i] = frames[k]
                self._steps[i] += 1
                truncated[i] = self.max_episode_steps is not None and self._steps[i] >= self.max_episode_steps
        infos: dict[str, Any] = {}
        for i in resetting:
            infos = self._add_info(infos, self._reset_world(i, None, None), i)
        self._autoreset = terminated | truncated
        return self._frames.copy(), rewards, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() was called with render_mode=None: nothing to render")
            return None
        return tuple(f.copy() for f in self._frames)

    def close_extras(self, **kwargs: Any) -> None:
        for i, s in enumerate(self.sessions):
            if s is not None:
                s.close()
                self.sessions[i] = None


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="nfd_rt.gym:Env", vector_entry_point="nfd_rt.gym:VectorEnv",
                       nondeterministic=False)
