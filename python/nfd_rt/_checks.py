"""Input validation shared by `nfd_rt.Session` and `ReferenceSession`: one place, one set of messages."""

from __future__ import annotations

from typing import Any

import numpy as np

from .configs import ModelConfig


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, possibly on a GPU
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()  # numpy has no bfloat16: float32 holds bfloat16 and float16 values exactly
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything unconvertible is a caller error
        raise ValueError(f"{what}: cannot convert {type(x).__name__} to an array ({e})") from None


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a))
        raise ValueError(f"{what} contains NaN or inf (first at flat index {bad[0]}, value {a.reshape(-1)[bad[0]]})")


def action(x: Any, cfg: ModelConfig) -> np.ndarray:
    """One frame's action -> float32 [action_dim]."""
    a = _as_numpy(x, "action")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"action must be numeric, got dtype {a.dtype}")
    if a.shape != (cfg.action_dim,):
        raise ValueError(f"action must have shape ({cfg.action_dim},) (action_dim of {cfg.name}), got {a.shape}")
    a = a.astype(np.float32)
    _check_finite(a, "action")
    return a


def actions(x: Any, count: int, cfg: ModelConfig) -> np.ndarray:
    """Per-frame actions of `count` context frames -> float32 [count, action_dim] (zeros when None)."""
    if x is None:
        return np.zeros((count, cfg.action_dim), dtype=np.float32)
    a = _as_numpy(x, "actions")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"actions must be numeric, got dtype {a.dtype}")
    if a.shape != (count, cfg.action_dim):
        raise ValueError(f"actions must have shape ({count}, {cfg.action_dim}) (one per context frame), got {a.shape}")
    a = a.astype(np.float32)
    _check_finite(a, "actions")
    return a


def frames(x: Any, cfg: ModelConfig) -> np.ndarray:
    """Context frames -> uint8 [T, H, W, 3] (C-contiguous), H x W the config's video_size; T a multiple of
    cfg.frames_per_step (a model whose latent stands for several frames encodes them together)."""
    f = _as_numpy(x, "frames")
    want = (*cfg.video_size, 3)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[1:] != want:
        raise ValueError(f"frames must be uint8 [T, {want[0]}, {want[1]}, 3] for {cfg.name}, got shape {f.shape}")
    if f.dtype != np.uint8:
        raise ValueError(f"frames must have dtype uint8 (RGB 0..255), got {f.dtype}")
    per = cfg.frames_per_step
    if len(f) % per:
        raise ValueError(f"frames: {len(f)} frames is not a multiple of {per} (the frames of one latent)")
    return np.ascontiguousarray(f)


def latents(x: Any, cfg: ModelConfig) -> np.ndarray:
    """Context latents -> float32 [T, C, h, w]."""
    z = _as_numpy(x, "latents")
    want = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    if z.ndim == 3:
        z = z[None]
    if z.ndim != 4 or z.shape[1:] != want:
        raise ValueError(f"latents must be float32 [T, {', '.join(map(str, want))}] for {cfg.name}, got {z.shape}")
    if z.dtype.kind != "f":
        raise ValueError(f"latents must be floating point, got dtype {z.dtype}")
    z = np.ascontiguousarray(z, dtype=np.float32)
    _check_finite(z, "latents")
    return z


def seed(x: Any) -> int:
    """A noise seed: an integer (Python or numpy) in [0, 2**64). Floats are refused, not truncated."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {x!r} ({type(x).__name__})")
    s = int(x)
    if not 0 <= s < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {x}")
    return s


def threads(x: Any, max_threads: int) -> int:
    """A CPU thread count: 0 (= physical cores) .. max_threads."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"threads must be an integer, got {x!r} ({type(x).__name__})")
    if not 0 <= int(x) <= max_threads:
        raise ValueError(f"threads must be between 0 (= number of physical cores) and {max_threads}, got {x}")
    return int(x)
