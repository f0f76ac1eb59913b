"""The WebSocket protocol of `nfd-rt serve`: close codes, client messages, key maps and worlds.

Everything a client sends goes through `parse_message`, which either returns a validated command or raises
`ProtocolError` with a message for the `{"type": "error"}` reply. Nothing here touches a session.
docs/serve.md is the public description of the same contract.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

# -- close codes (RFC 6455 4000-4999 are for applications; the names mirror the HTTP status they resemble) --
CLOSE_NORMAL = 1000  # the client left
CLOSE_GOING_AWAY = 1001  # the server (or its replica) is shutting down
CLOSE_INTERNAL_ERROR = 1011  # the player's session failed inside the runtime
CLOSE_REPLICA_LOST = 1012  # "service restart": the Ray Serve replica holding the session died; reconnect
CLOSE_MALFORMED = 4400  # too many malformed messages in a row
CLOSE_UNAUTHORIZED = 4401  # --token is set and the connection's ?token= is missing or wrong
CLOSE_IDLE = 4408  # no message from the client for --idle-timeout seconds
CLOSE_WORLD_TAKEN = 4409  # another connection continued this player's world with ?resume=
CLOSE_TOO_MANY_MESSAGES = 4429  # more than the allowed messages per second
CLOSE_BAD_REQUEST = 4422  # bad query parameter (?format=, ?seed=)
CLOSE_SLOW_CLIENT = 4504  # a frame could not be delivered for --send-timeout seconds (client not reading)
CLOSE_FULL = 4503  # --max-players players already connected
CLOSE_WORLD_LOST = 4507  # the player's parked world is no longer kept (--max-parked-bytes, or its store lost it)

MAX_MESSAGE_CHARS = 4096  # longest text message accepted (an action of a few hundred floats fits)
MAX_SEED = 2**31 - 1


class ProtocolError(ValueError):
    """A malformed client message; the text goes back to the client in {"type": "error", "message": ...}."""


@dataclass(frozen=True)
class Action:
    vector: np.ndarray  # float32 [action_dim], finite


@dataclass(frozen=True)
class Pointer:
    """Where a "keys" message's mouse goes in the action vector: its movement since the last message ("mouse":
    [dx, dy], pixels) times `scale` at dims `dx` and `dy`, the wheel ("scroll": -1, 0 or 1 for down, none, up) at
    dim `scroll` (None: the model has no wheel input). Mouse buttons are keys (MouseLeft, MouseRight, MouseMiddle)."""

    dx: int
    dy: int
    scroll: int | None = None
    scale: float = 1.0


MAX_MOUSE = 1e4  # largest |dx|, |dy| a "keys" message may carry (pixels)


@dataclass(frozen=True)
class Reset:
    seed: int


@dataclass(frozen=True)
class Ping:
    """{"type": "ping", "t": any}: answered at once with {"type": "pong", "t": same} (clock-free latency)."""

    t: object


# -- key maps ---------------------------------------------------------------------------------------------------
# A key map turns browser key names (KeyboardEvent.key / .code) into multi-hot action dimensions. The shipped
# Gridworld model was trained with dims 0-3 = up, down, left, right (python/nfd_rt/demo/game.py).
GRIDWORLD_KEYS: dict[str, int] = {
    "ArrowUp": 0, "KeyW": 0, "w": 0, "W": 0,
    "ArrowDown": 1, "KeyS": 1, "s": 1, "S": 1,
    "ArrowLeft": 2, "KeyA": 2, "a": 2, "A": 2,
    "ArrowRight": 3, "KeyD": 3, "d": 3, "D": 3,
}


def _dim(v: object, action_dim: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and 0 <= v < action_dim


def read_keymap(path: str, action_dim: int) -> tuple[dict[str, int], Pointer | None]:
    """A key map file: JSON object {"ArrowUp": 0, "KeyW": 0, ...} (key name -> action dimension), optionally with
    a "pointer" entry {"dx": dim, "dy": dim, "scroll": dim, "scale": number} that sends the mouse's movement and
    wheel (Pointer). Returns (keys, pointer or None)."""
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"key map {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"key map {path}: expected a JSON object {{key name: action dimension}}")
    out, pointer = {}, None
    for k, v in raw.items():
        if k == "pointer":
            pointer = _pointer(path, v, action_dim)
            continue
        if not _dim(v, action_dim):
            raise ValueError(f"key map {path}: {k!r} maps to {v!r}, not an action dimension in [0, {action_dim})")
        out[str(k)] = v
    if not out:
        raise ValueError(f"key map {path}: no key is mapped")
    return out, pointer


def _pointer(path: str, v: object, action_dim: int) -> Pointer:
    if not isinstance(v, dict) or not {"dx", "dy"} <= set(v) or not set(v) <= {"dx", "dy", "scroll", "scale"}:
        raise ValueError(f"key map {path}: \"pointer\" must be an object with \"dx\" and \"dy\" (action dimensions) "
                         f"and optionally \"scroll\" (a dimension) and \"scale\" (a number), got {v!r}")
    for k in ("dx", "dy", "scroll"):
        if k in v and not _dim(v[k], action_dim):
            raise ValueError(f"key map {path}: pointer {k!r} is {v[k]!r}, not an action dimension in [0, {action_dim})")
    scale = v.get("scale", 1.0)
    if not _finite_number(scale) or scale == 0:
        raise ValueError(f"key map {path}: pointer \"scale\" must be a finite non-zero number, got {scale!r}")
    return Pointer(v["dx"], v["dy"], v.get("scroll"), float(scale))


def load_keymap(path: str, action_dim: int) -> dict[str, int]:
    """The keys of a key map file (read_keymap without the pointer)."""
    return read_keymap(path, action_dim)[0]


# -- parsing ----------------------------------------------------------------------------------------------------
def _finite_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def control_vector(action_dim: int, keymap: dict[str, int], keys, pointer: Pointer | None = None,
                   mouse=None, scroll: int | None = None) -> np.ndarray:
    """The action vector of held `keys` (known to `keymap`: 1 at each one's dimension), the mouse's movement
    [dx, dy] (times the pointer's scale) and the wheel (-1, 0, 1), as `nfd-rt serve` and `nfd-rt play` build it."""
    vec = np.zeros(action_dim, np.float32)
    for k in keys:
        vec[keymap[k]] = 1.0
    if mouse is not None:
        vec[pointer.dx] += np.float32(mouse[0] * pointer.scale)
        vec[pointer.dy] += np.float32(mouse[1] * pointer.scale)
    if scroll is not None:
        vec[pointer.scroll] += np.float32(scroll)
    return vec


def parse_message(text: object, action_dim: int, keymap: dict[str, int] | None, pointer: Pointer | None = None):
    """One client message -> Action | Reset | Ping. Raises ProtocolError naming what is wrong."""
    if not isinstance(text, str):
        raise ProtocolError("binary messages are not accepted: send text JSON")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message of {len(text)} characters is longer than the limit of {MAX_MESSAGE_CHARS}")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"expected a JSON object with a \"type\", got {type(msg).__name__}")
    kind = msg.get("type")
    if kind == "action":
        a = msg.get("action")
        if not isinstance(a, list) or len(a) != action_dim:
            got = f"a list of {len(a)}" if isinstance(a, list) else type(a).__name__
            raise ProtocolError(f"\"action\" must be a list of {action_dim} numbers (action_dim), got {got}")
        if not all(_finite_number(x) for x in a):
            raise ProtocolError("\"action\" must hold finite numbers only")
        return Action(np.asarray(a, np.float32))
    if kind == "keys":
        keys = msg.get("keys")
        if keymap is None:
            raise ProtocolError("this model has no key map: send {\"type\": \"action\", \"action\": [...]} instead")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 32:
            raise ProtocolError("\"keys\" must be a list of at most 32 key names (strings)")
        unknown = [k for k in keys if k not in keymap]
        if unknown:
            raise ProtocolError(f"unknown key(s) {unknown[:4]}; this model knows {sorted(keymap)}")
        mouse, scroll = msg.get("mouse"), msg.get("scroll")
        if (mouse is not None or scroll is not None) and pointer is None:
            raise ProtocolError("this model's key map has no pointer: \"mouse\" and \"scroll\" are not accepted")
        if mouse is not None:
            if not isinstance(mouse, list) or len(mouse) != 2 or not all(_finite_number(x) for x in mouse) or \
                    max(abs(x) for x in mouse) > MAX_MOUSE:
                raise ProtocolError(f"\"mouse\" must be [dx, dy], finite numbers of at most {MAX_MOUSE:g} in size")
        if scroll is not None:
            if scroll not in (-1, 0, 1) or isinstance(scroll, bool):
                raise ProtocolError(f"\"scroll\" must be -1, 0 or 1 (wheel down, none, up), got {scroll!r}")
            if pointer.scroll is None:
                raise ProtocolError("this model's key map has no scroll dimension")
        return Action(control_vector(action_dim, keymap, keys, pointer, mouse, scroll))
    if kind == "reset":
        seed = msg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ProtocolError(f"\"seed\" must be an integer in [0, {MAX_SEED}], got {seed!r}")
        return Reset(seed)
    if kind == "ping":
        t = msg.get("t")
        if not (t is None or _finite_number(t) or (isinstance(t, str) and len(t) <= 64)):
            raise ProtocolError("\"t\" of a ping must be a number or a short string")
        return Ping(t)
    raise ProtocolError(f"unknown message type {kind!r}; expected \"action\", \"keys\", \"reset\" or \"ping\"")


# -- worlds: what a reset starts from -------------------------------------------------------------------------
class World:
    """The starting point of a session. `context(seed)` -> uint8 [T, H, W, 3] context frames of the model's video
    size (T may be 0; a multiple of the model's frames_per_step)."""

    name = "blank"
    keymap: dict[str, int] | None = None
    pointer: Pointer | None = None

    def context(self, seed: int, cfg) -> np.ndarray:
        return np.zeros((0, *cfg.video_size, 3), np.uint8)


class GridworldWorld(World):
    """The shipped demo's game: seed = room; the room's first frame is the model's context frame."""

    name = "gridworld"
    keymap = GRIDWORLD_KEYS

    def context(self, seed: int, cfg) -> np.ndarray:
        from ..demo import game

        if (cfg.frame_height, cfg.frame_width) != (game.SIZE, game.SIZE) or cfg.action_dim < 4:
            raise ValueError(f"the gridworld world needs 64x64 frames and action_dim >= 4; model {cfg.name} has "
                             f"{cfg.frame_width}x{cfg.frame_height} frames and action_dim {cfg.action_dim}")
        return game.GridWorld(seed).render()[None]


def model_keymap(model_cfg) -> tuple[dict[str, int] | None, Pointer | None]:
    """The key map a model brings when no --keymap is given: Waypoint's controls (its buttons are key codes, its
    mouse and wheel have dims: `configs_waypoint.keymap`); none for other models."""
    if getattr(model_cfg, "architecture", "nfd") != "waypoint":
        return None, None
    from .. import configs_waypoint

    keys, p = configs_waypoint.keymap(model_cfg)
    return keys, Pointer(p["dx"], p["dy"], p["scroll"], p["scale"])


def make_world(name: str, model_path: str, keymap_path: str | None, action_dim: int, model_cfg=None) -> World:
    """"auto": gridworld for a shipped demo model (the teacher or a distilled student), blank otherwise. A --keymap
    file overrides the world's; without one, a model with its own controls (Waypoint) brings its key map."""
    import os

    from ..demo import MODELS

    if name == "auto":
        same = os.path.exists(model_path) and any(os.path.exists(m) and os.path.samefile(model_path, m)
                                                  for m in MODELS.values())
        name = "gridworld" if same else "blank"
    if name == "gridworld":
        world: World = GridworldWorld()
    elif name == "blank":
        world = World()
    else:
        raise ValueError(f"world must be 'auto', 'gridworld' or 'blank', got {name!r}")
    if keymap_path:
        world.keymap, world.pointer = read_keymap(keymap_path, action_dim)
    elif model_cfg is not None and world.keymap is None:
        world.keymap, world.pointer = model_keymap(model_cfg)
    return world
