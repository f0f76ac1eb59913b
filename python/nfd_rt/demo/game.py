"""Gridworld: the small deterministic game the shipped demo model was trained on (numpy only).

A fixed-camera 64x64 room seen from above: an 8x8 grid of 8-pixel tiles with a wall border and a few
interior wall blocks (procedural, from the seed), a red agent that the arrow keys move 4 pixels per frame
and that walls stop, and yellow coins that vanish when the agent touches them.

Actions are multi-hot key vectors of the model's `action_dim` (8 for `tiny`): dims 0-3 are up, down, left,
right; all zeros is no-op; the other dims stay zero. Frame i of an episode is the result of action i applied
to frame i-1 (action 0 is the no-op that "produced" the first frame), which is exactly how `Session.step`
pairs an action with the frame it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

TILE = 8  # pixels per tile
GRID = 8  # tiles per side
SIZE = TILE * GRID  # 64 pixels
AGENT = 6  # agent side, pixels
COIN = 4  # coin side, pixels
SPEED = 4  # pixels per frame while a key is held
NUM_COINS = 3
ACTION_DIM = 8

KEYS = ("noop", "up", "down", "left", "right")
FLOOR = np.array([28, 32, 48], np.uint8)
WALL = np.array([120, 124, 140], np.uint8)
AGENT_RGB = np.array([232, 64, 52], np.uint8)
COIN_RGB = np.array([250, 208, 40], np.uint8)


def action_vector(key: str | int, action_dim: int = ACTION_DIM) -> np.ndarray:
    """Multi-hot action for one key ("noop", "up", "down", "left", "right" or its index in KEYS)."""
    k = KEYS.index(key) if isinstance(key, str) and key in KEYS else key
    if isinstance(k, str) or not 0 <= int(k) < len(KEYS):
        raise ValueError(f"unknown key {key!r}; keys are {KEYS}")
    k = int(k)
    a = np.zeros(action_dim, np.float32)
    if k:
        a[k - 1] = 1.0
    return a


def _motion(action: np.ndarray) -> tuple[int, int]:
    a = np.asarray(action, np.float32).reshape(-1)
    if a.shape[0] < 4 or not np.all(np.isfinite(a)):
        raise ValueError(f"action must be a finite vector with at least 4 entries, got shape {a.shape}")
    up, down, left, right = (a[:4] > 0.5).astype(int)
    return SPEED * (right - left), SPEED * (down - up)


def make_walls(rng: np.random.Generator) -> np.ndarray:
    """bool [GRID, GRID] wall tiles: the border plus 3-6 interior blocks, every free tile still reachable."""
    while True:
        walls = np.zeros((GRID, GRID), bool)
        walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
        for _ in range(rng.integers(3, 7)):
            r, c = rng.integers(1, GRID - 1, size=2)
            if rng.random() < 0.5:  # a 1x2 or 2x1 block
                walls[r, c] = True
                r2, c2 = (r, min(c + 1, GRID - 2)) if rng.random() < 0.5 else (min(r + 1, GRID - 2), c)
                walls[r2, c2] = True
            else:
                walls[r, c] = True
        free = np.argwhere(~walls)
        if len(free) >= NUM_COINS + 1 and len(_reachable(walls, tuple(free[0]))) == len(free):
            return walls


def _bfs(walls: np.ndarray, start: tuple[int, int], targets=frozenset()) -> tuple[dict, tuple | None]:
    """Breadth-first search over free tiles from `start`: (parent of every tile reached, first target reached or
    None). Without targets it explores everything reachable."""
    parent, todo = {start: None}, deque([start])
    while todo:
        cell = todo.popleft()
        if cell in targets:
            return parent, cell
        r, c = cell
        for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not walls[n] and n not in parent:
                parent[n] = cell
                todo.append(n)
    return parent, None


def _reachable(walls: np.ndarray, start: tuple[int, int]) -> set[tuple[int, int]]:
    return set(_bfs(walls, start)[0])


@dataclass
class GridWorld:
    """The game state; `seed` fixes the room, the start position and the coins."""

    seed: int = 0
    walls: np.ndarray = field(init=False)
    agent: np.ndarray = field(init=False)  # top-left pixel (x, y)
    coins: list = field(init=False)  # top-left pixels (x, y) of the coins still there

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.walls = make_walls(rng)
        free = np.argwhere(~self.walls)  # (row, col)
        picks = rng.choice(len(free), size=NUM_COINS + 1, replace=False)
        r, c = free[picks[0]]
        self.agent = np.array([c * TILE + 1, r * TILE + 1])
        self.coins = [(int(c) * TILE + 2, int(r) * TILE + 2) for r, c in free[picks[1:]]]
        self._collect()

    # -- dynamics -------------------------------------------------------------------------------------------
    def _blocked(self, x: int, y: int) -> bool:
        """True if an agent with top-left (x, y) overlaps a wall tile."""
        c0, c1 = x // TILE, (x + AGENT - 1) // TILE
        r0, r1 = y // TILE, (y + AGENT - 1) // TILE
        return bool(self.walls[r0:r1 + 1, c0:c1 + 1].any())

    def _collect(self) -> None:
        x, y = self.agent
        self.coins = [(cx, cy) for cx, cy in self.coins
                      if not (cx < x + AGENT and x < cx + COIN and cy < y + AGENT and y < cy + COIN)]

    def step(self, action: np.ndarray) -> np.ndarray:
        """Apply one action (multi-hot key vector) and return the new frame. Walls stop the agent flush."""
        dx, dy = _motion(action)
        for axis, d in ((0, dx), (1, dy)):  # x first, then y: the agent slides along walls
            for _ in range(abs(d)):
                moved = self.agent.copy()
                moved[axis] += 1 if d > 0 else -1
                if self._blocked(*moved):
                    break
                self.agent = moved
        self._collect()
        return self.render()

    # -- pictures -------------------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """uint8 [64, 64, 3]."""
        img = np.empty((SIZE, SIZE, 3), np.uint8)
        img[:] = FLOOR
        tiles = np.kron(self.walls, np.ones((TILE, TILE), bool))
        img[tiles] = WALL
        for cx, cy in self.coins:
            img[cy:cy + COIN, cx:cx + COIN] = COIN_RGB
        x, y = self.agent
        img[y:y + AGENT, x:x + AGENT] = AGENT_RGB
        return img

    # -- a purposeful player --------------------------------------------------------------------------------
    def greedy_key(self) -> int:
        """Key (index into KEYS) that walks toward the nearest coin along free tiles; no-op when none is left."""
        if not self.coins:
            return 0
        x, y = self.agent
        start = ((y + AGENT // 2) // TILE, (x + AGENT // 2) // TILE)
        targets = {(cy // TILE, cx // TILE) for cx, cy in self.coins}
        prev, cell = _bfs(self.walls, start, targets)
        if cell is None:
            return 0
        while prev[cell] is not None and prev[cell] != start:
            cell = prev[cell]
        # Aim at the next tile's agent-sized centre, one axis at a time.
        tx, ty = cell[1] * TILE + 1, cell[0] * TILE + 1
        if cell == start:
            cx, cy = next((cx, cy) for cx, cy in self.coins if (cy // TILE, cx // TILE) == cell)
            tx, ty = cx - 1, cy - 1
        if abs(ty - y) >= abs(tx - x) and ty != y:
            return 2 if ty > y else 1
        if tx != x:
            return 4 if tx > x else 3
        return 0


def agent_position(frame: np.ndarray, tol: int = 60) -> np.ndarray | None:
    """Centre (x, y) of the agent found by colour in a uint8 frame, or None when no pixel is close to red."""
    d = np.abs(frame.astype(np.int16) - AGENT_RGB.astype(np.int16)).max(axis=-1)
    ys, xs = np.nonzero(d < tol)
    if len(xs) == 0:
        return None
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def random_keys(rng: np.random.Generator, length: int) -> np.ndarray:
    """A human-like random key sequence: each key (no-op included) held for 1-8 frames."""
    keys = np.empty(length, np.int64)
    i = 0
    while i < length:
        hold = int(rng.integers(1, 9))
        keys[i:i + hold] = rng.choice(len(KEYS), p=[0.2, 0.2, 0.2, 0.2, 0.2])
        i += hold
    return keys


def rollout(seed: int, length: int, policy: str = "random", policy_seed: int | None = None,
            action_dim: int = ACTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """One episode: frames uint8 [length, 64, 64, 3] and actions float32 [length, action_dim].

    policy "random" holds random keys; "greedy" walks to the coins (with 20% random frames mixed in so that
    it also bumps into walls). actions[0] is the no-op before the first frame.
    """
    if policy not in ("random", "greedy"):
        raise ValueError(f"policy must be 'random' or 'greedy', got {policy!r}")
    game = GridWorld(seed)
    rng = np.random.default_rng(seed if policy_seed is None else policy_seed)
    keys = random_keys(rng, length)
    frames = np.empty((length, SIZE, SIZE, 3), np.uint8)
    actions = np.zeros((length, action_dim), np.float32)
    frames[0] = game.render()
    for i in range(1, length):
        k = int(keys[i]) if policy == "random" or rng.random() < 0.2 else game.greedy_key()
        actions[i] = action_vector(k, action_dim)
        frames[i] = game.step(actions[i])
    return frames, actions


def dataset(num_episodes: int, length: int, seed: int = 0, action_dim: int = ACTION_DIM
            ) -> tuple[np.ndarray, np.ndarray]:
    """`num_episodes` episodes (half random, half greedy), each from its own room seed derived from `seed`."""
    frames = np.empty((num_episodes, length, SIZE, SIZE, 3), np.uint8)
    actions = np.empty((num_episodes, length, action_dim), np.float32)
    for e in range(num_episodes):
        room = int(np.random.default_rng([seed, e]).integers(2**31))
        frames[e], actions[e] = rollout(room, length, "random" if e % 2 == 0 else "greedy", room + 1, action_dim)
    return frames, actions
