"""`nfd-rt demo`: the shipped world model plays Gridworld from a scripted player, written as a video.

The player is the simulator's coin-seeking policy; the same actions drive the real game and the model, so the
video shows the game (left) next to what the model imagines (right).
"""

from __future__ import annotations

import os
import time

import numpy as np

from .._progress import ProgressBar
from . import game
from .evaluate import position_error

SEPARATOR = 16  # pixels between the two panels (keeps MP4 widths a multiple of 16)


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame


def side_by_side(truth: np.ndarray | None, generated: np.ndarray, scale: int) -> np.ndarray:
    g = upscale(generated, scale)
    if truth is None:
        return g
    gap = np.full((g.shape[0], SEPARATOR, 3), 255, np.uint8)
    return np.concatenate([upscale(truth, scale), gap, g], axis=1)


def write_video(frames: list[np.ndarray], path: str, fps: float) -> str:
    """MP4 (imageio-ffmpeg) or GIF (pillow), chosen by the extension of `path`."""
    try:
        import imageio.v2 as imageio
    except ImportError as e:
        raise ImportError(f"writing {path} needs imageio: pip install imageio imageio-ffmpeg ({e})") from None
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    elif ext == ".mp4":
        imageio.mimsave(path, frames, fps=fps, codec="libx264", quality=8, macro_block_size=16)
    else:
        raise ValueError(f"video path must end in .mp4 or .gif, got {path!r}")
    return path


def run_demo(session, frames: int, room: int, scale: int = 4, with_truth: bool = True, random_every: int = 6,
             quiet: bool = False) -> tuple[list[np.ndarray], dict]:
    """Step `session` for `frames` frames on a scripted player in room `room`.

    The player walks to the coins, with a random key every `random_every` frames so it also meets walls.
    Returns the video frames and a summary (frames made, FPS of the runtime alone, mean agent position error,
    `interrupted`: Ctrl-C stopped the run early, and the video holds the frames made until then).
    """
    cfg = session.config
    world = game.GridWorld(room)
    rng = np.random.default_rng(room)
    first = world.render()
    session.reset(frames=first[None])
    video = [side_by_side(first if with_truth else None, first, scale)]
    errors, step_seconds = [], 0.0
    bar = None if quiet else ProgressBar(frames, "demo")
    interrupted = False
    try:
        for i in range(1, frames + 1):
            key = int(rng.integers(len(game.KEYS))) if random_every and i % random_every == 0 else world.greedy_key()
            action = game.action_vector(key, cfg.action_dim)
            truth = world.step(action)
            t0 = time.perf_counter()
            out = session.step(action)
            step_seconds += time.perf_counter() - t0
            errors.append(position_error(out, truth)[0])
            video.append(side_by_side(truth if with_truth else None, out, scale))
            if bar:
                bar.update(i, f"{i / step_seconds:.0f} FPS")
    except KeyboardInterrupt:
        interrupted = True
    done = len(video) - 1
    return video, {"frames": done, "fps": done / step_seconds if step_seconds else 0.0,
                   "mean_position_error_px": float(np.mean(errors)) if errors else float("nan"),
                   "interrupted": interrupted}
