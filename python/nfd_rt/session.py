"""`nfd_rt.Session`: the C++ runtime behind exactly the API of `nfd_rt.reference.ReferenceSession`.

Inputs are validated here with the same code and messages as the reference (`_checks.py`); the extension
checks buffers again before handing them to C++. Torch tensors are accepted (converted through numpy).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from . import _checks
from ._native import core
from .configs import NFDConfig

class Session:
    """Frame-step session over a `.nfd` file.

    Args:
        path: the model file.
        device: "cpu" or "cuda".
        dtype: compute dtype, "float32" (CPU and CUDA), "bfloat16" or "float16" (CUDA).
        seed: noise seed (Philox); the same seed gives the same video on every backend.
        threads: CPU threads, 0 = number of physical cores. The result does not depend on it (bitwise).
        max_memory_bytes: refuse to open (MemoryError) when the session would need more than this on its
            device. The memory the device has available is always checked: a session that cannot fit raises
            MemoryError naming the bytes needed and available, before allocating anything.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 threads: int = 0, cuda_graphs: bool = True, max_memory_bytes: int | None = None):
        if not isinstance(device, str):
            device = str(device)  # e.g. torch.device("cuda")
        if not isinstance(dtype, str):
            dtype = str(dtype).removeprefix("torch.")  # e.g. torch.bfloat16; the runtime parses the name
        if max_memory_bytes is not None and (not isinstance(max_memory_bytes, (int, np.integer))
                                             or isinstance(max_memory_bytes, bool) or max_memory_bytes <= 0):
            raise ValueError(f"max_memory_bytes must be a positive integer or None, got {max_memory_bytes!r}")
        self._s = None
        c = core()
        self.seed = _checks.seed(seed)
        threads = _checks.threads(threads, c.max_threads())
        if threads > (os.cpu_count() or 1):
            warnings.warn(f"threads={threads} is more than the {os.cpu_count()} CPUs of this machine: the extra "
                          "threads only wait for one another (the result is the same at any thread count)",
                          RuntimeWarning, stacklevel=2)
        self._s = c.Session(os.fspath(path), device, dtype, self.seed, threads,
                            bool(cuda_graphs), int(max_memory_bytes or 0))
        self._cfg = NFDConfig.from_json(self._s.config_json)
        self.device = self._s.device
        self.dtype = dtype

    # -- public API (same as ReferenceSession) --------------------------------------------------------------------
    @property
    def config(self) -> NFDConfig:
        return self._cfg

    @property
    def frame_index(self) -> int:
        return self._open().frame_index

    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then write the given context frames (uint8 [T,H,W,3]) or latents into the cache."""
        s = self._open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        if frames is not None:
            f = _checks.frames(frames, self._cfg)
            s.reset_frames(f, _checks.actions(actions, f.shape[0], self._cfg))
        elif latents is not None:
            z = _checks.latents(latents, self._cfg)
            s.reset_latents(z, _checks.actions(actions, z.shape[0], self._cfg))
        else:
            a = _checks.actions(actions, 0, self._cfg)
            s.reset_latents(np.zeros((0, self._cfg.latent_channels, self._cfg.latent_height,
                                      self._cfg.latent_width), np.float32), a)

    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame's latent (float32 [C, h, w]) for `action` and append it to the context."""
        s = self._open()
        latent, _ = s.step(_checks.action(action, self._cfg), False)
        return latent

    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        s = self._open()
        _, frame = s.step(_checks.action(action, self._cfg), True)
        return frame

    def decode(self, latent: Any) -> np.ndarray:
        """Decode one latent [C, h, w] to uint8 [H, W, 3]."""
        s = self._open()
        z = _checks.latents(latent, self._cfg)
        if z.shape[0] != 1:
            raise ValueError(f"decode takes one latent [C, h, w], got {z.shape[0]} latents")
        return s.decode(z[0])

    def memory_bytes(self) -> int:
        """Bytes the session holds on its device: weights + KV cache + activation buffers."""
        return self._open().memory_bytes()

    def kv_cache_bytes(self) -> int:
        return self._open().kv_cache_bytes()

    def close(self) -> None:
        """Free the session's memory now. Any later call raises RuntimeError("session is closed")."""
        if self._s is not None:
            self._s.close()
            self._s = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._s is None else f"frame_index={self._s.frame_index}"
        return f"nfd_rt.Session({self._cfg.name}, device={self.device!r}, dtype={self.dtype!r}, {state})"

    # -- internals --------------------------------------------------------------------------------------------
    def _open(self):
        if self._s is None:
            raise RuntimeError("session is closed")
        return self._s
