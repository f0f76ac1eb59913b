"""How well the demo model plays Gridworld: rollouts against the simulator's ground truth.

For each held-out sequence the session is reset with the episode's first frame, then stepped with the episode's
actions; every generated frame is compared with the simulator's frame for the same actions:
  - agent position error: distance in pixels between the agent's centres, each found by colour
    (`game.agent_position`); a frame where no agent is found counts as MISSING_PENALTY pixels;
  - PSNR of the whole frame.
The baseline is "repeat the last frame": it keeps showing the context frame, so its position error is how far
the true agent has moved since. A world model that learned nothing about actions does no better than that.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import game

MISSING_PENALTY = 32.0  # pixels: half the frame, charged when the generated frame shows no agent
HELD_OUT_SEED = 1_000_003  # room seeds for evaluation come from here; training rooms come from seed 0


def held_out_sequence(i: int, length: int, action_dim: int = game.ACTION_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Held-out sequence i: frames uint8 [length, 64, 64, 3], actions [length, action_dim] (even i random keys,
    odd i the coin-seeking player)."""
    room = int(np.random.default_rng([HELD_OUT_SEED, i]).integers(2**31))
    return game.rollout(room, length, "random" if i % 2 == 0 else "greedy", room + 1, action_dim)


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


def evaluate(session, sequences: int = 100, length: int = 32, progress: Callable[[int], None] | None = None
             ) -> dict:
    """Roll out `sequences` held-out sequences with `session` (an nfd_rt.Session or ReferenceSession).

    Returns per-frame mean curves and overall means for the model and the repeat-last-frame baseline.
    """
    if length < 2:
        raise ValueError("length must be >= 2 (one context frame, at least one generated frame)")
    cfg = session.config
    steps = length - 1
    err = {"model": np.zeros((sequences, steps)), "repeat_last_frame": np.zeros((sequences, steps))}
    snr = {"model": np.zeros((sequences, steps)), "repeat_last_frame": np.zeros((sequences, steps))}
    found = np.zeros((sequences, steps), bool)
    for s in range(sequences):
        frames, actions = held_out_sequence(s, length, cfg.action_dim)
        truth = [game.agent_position(f) for f in frames]
        session.reset(frames=frames[:1])
        for t in range(1, length):
            out = session.step(actions[t])
            err["model"][s, t - 1], found[s, t - 1] = _error(game.agent_position(out), truth[t])
            err["repeat_last_frame"][s, t - 1], _ = _error(truth[0], truth[t])
            snr["model"][s, t - 1] = psnr(out, frames[t])
            snr["repeat_last_frame"][s, t - 1] = psnr(frames[0], frames[t])
        if progress is not None:
            progress(s + 1)
    result = {"sequences": sequences, "length": length, "missing_penalty_px": MISSING_PENALTY,
              "agent_found_fraction": float(found.mean())}
    for name in err:
        result[name] = {
            "position_error_px": float(err[name].mean()),
            "position_error_px_at_frame": {str(t): float(err[name][:, t - 1].mean())
                                           for t in (1, 8, 16, steps) if t <= steps},
            "psnr_db": float(snr[name].mean()),
            "position_error_curve": [round(float(x), 3) for x in err[name].mean(axis=0)],
        }
    return result
