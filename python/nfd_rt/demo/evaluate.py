"""How well the demo model plays Gridworld: rollouts against the simulator's ground truth.

For each held-out sequence the session is reset with the episode's first frame, then stepped with the episode's
actions; every generated frame is compared with the simulator's frame for the same actions:
  - agent position error: distance in pixels between the agent's centres, each found by colour
    (`game.agent_position`); a frame where no agent is found counts as MISSING_PENALTY pixels;
  - PSNR of the whole frame;
  - coin state: which tiles show a coin (`coin_tiles`), in the model's frame and in the game's. A frame agrees
    when the two sets are equal; a coin the game has already collected but the model still shows "lingers", a
    coin the game still has but the model dropped has "vanished".
The baseline is "repeat the last frame": it keeps showing the context frame, so its position error is how far
the true agent has moved since. A world model that learned nothing about actions does no better than that.
"""

from __future__ import annotations

from typing import Callable

import time

import numpy as np

from . import game

MISSING_PENALTY = 32.0  # pixels: half the frame, charged when the generated frame shows no agent
HELD_OUT_SEED = 1_000_003  # room seeds for evaluation come from here; training rooms come from seed 0


def held_out_sequence(i: int, length: int, action_dim: int = game.ACTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Held-out sequence i: frames uint8 [length, 64, 64, 3], actions [length, action_dim] (even i random keys,
    odd i the coin-seeking player)."""
    room = int(np.random.default_rng([HELD_OUT_SEED, i]).integers(2**31))
    return game.rollout(room, length, "random" if i % 2 == 0 else "greedy", room + 1, action_dim)


def coin_tiles(frame: np.ndarray, tol: int = 60) -> np.ndarray:
    """bool [GRID, GRID]: tiles whose coin square (game.COIN pixels, 2 px in from the tile corner, where the game
    draws coins) is mostly coin-coloured in a uint8 frame. Works on generated frames: a half-faded coin counts
    when over half of its pixels are within `tol` of the coin colour."""
    o = (game.TILE - game.COIN) // 2
    d = np.abs(frame.astype(np.int16) - game.COIN_RGB.astype(np.int16)).max(axis=-1) < tol  # [H, W]
    tiles = d.reshape(game.GRID, game.TILE, game.GRID, game.TILE)[:, o:o + game.COIN, :, o:o + game.COIN]
    return tiles.mean(axis=(1, 3)) > 0.5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _error(p_gen: np.ndarray | None, p_true: np.ndarray | None) -> tuple[float, bool]:
    """(distance in pixels, agent found in the generated frame) from the two agent positions."""
    if p_true is None:
        raise ValueError("ground-truth frame has no agent")
    if p_gen is None:
        return MISSING_PENALTY, False
    return float(np.linalg.norm(p_gen - p_true)), True


def position_error(generated: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """(error in pixels, agent found in the generated frame)."""
    return _error(game.agent_position(generated), game.agent_position(truth))


def _coin_counts(shown: np.ndarray, present: np.ndarray, at_start: np.ndarray) -> list[int]:
    """[frame agrees, collected coins still shown, collected coins, present coins not shown, present coins]."""
    collected = at_start & ~present
    return [int(np.array_equal(shown, present)), int((shown & collected).sum()), int(collected.sum()),
            int((present & ~shown).sum()), int(present.sum())]


def evaluate(session, sequences: int = 100, length: int = 32, progress: Callable[[int], None] | None = None
             ) -> dict:
    """Roll out `sequences` held-out sequences with `session` (an nfd_rt.Session or ReferenceSession).

    Returns per-frame mean curves and overall means for the model and the repeat-last-frame baseline, the coin
    state (see the module docstring) and `fps`: generated frames per second of `session.step` (timing, so it
    varies from run to run and machine to machine; every other figure is deterministic).
    """
    if length < 2:
        raise ValueError("length must be >= 2 (one context frame, at least one generated frame)")
    cfg = session.config
    steps = length - 1
    err = {"model": np.zeros((sequences, steps)), "repeat_last_frame": np.zeros((sequences, steps))}
    snr = {"model": np.zeros((sequences, steps)), "repeat_last_frame": np.zeros((sequences, steps))}
    found = np.zeros((sequences, steps), bool)
    # Coin state per generated frame: [agree, lingering coins, collected coins, vanished coins, coins present].
    coins = {"model": np.zeros((sequences, steps, 5)), "repeat_last_frame": np.zeros((sequences, steps, 5))}
    step_seconds = 0.0
    for s in range(sequences):
        frames, actions = held_out_sequence(s, length, cfg.action_dim)
        truth = [game.agent_position(f) for f in frames]
        truth_coins = [coin_tiles(f) for f in frames]
        session.reset(frames=frames[:1])
        for t in range(1, length):
            t0 = time.perf_counter()
            out = session.step(actions[t])
            step_seconds += time.perf_counter() - t0
            coins["model"][s, t - 1] = _coin_counts(coin_tiles(out), truth_coins[t], truth_coins[0])
            coins["repeat_last_frame"][s, t - 1] = _coin_counts(truth_coins[0], truth_coins[t], truth_coins[0])
            err["model"][s, t - 1], found[s, t - 1] = _error(game.agent_position(out), truth[t])
            err["repeat_last_frame"][s, t - 1], _ = _error(truth[0], truth[t])
            snr["model"][s, t - 1] = psnr(out, frames[t])
            snr["repeat_last_frame"][s, t - 1] = psnr(frames[0], frames[t])
        if progress is not None:
            progress(s + 1)
    result = {"sequences": sequences, "length": length, "missing_penalty_px": MISSING_PENALTY,
              "agent_found_fraction": float(found.mean()), "steps_per_frame": cfg.num_steps,
              "schedule": list(cfg.schedule), "fps": sequences * steps / max(step_seconds, 1e-9)}
    for name in err:
        c = coins[name].reshape(-1, 5).sum(axis=0)
        result[name] = {
            "coin_state_agreement": float(c[0] / (sequences * steps)),
            "coins_lingering_fraction": float(c[1] / max(c[2], 1)),
            "coins_vanished_fraction": float(c[3] / max(c[4], 1)),
            "position_error_px": float(err[name].mean()),
            "position_error_px_at_frame": {str(t): float(err[name][:, t - 1].mean())
                                           for t in (1, 8, 16, steps) if t <= steps},
            "psnr_db": float(snr[name].mean()),
            "position_error_curve": [round(float(x), 3) for x in err[name].mean(axis=0)],
            "psnr_curve": [round(float(x), 2) for x in snr[name].mean(axis=0)],
        }
    return result
