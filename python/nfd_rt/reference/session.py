"""ReferenceSession: the frame-step API in pure PyTorch, with a real KV cache (sink frames + rolling window).

It is the parity oracle for the C++ runtime and the eager baseline of the benchmarks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import _checks, rng
from ..configs import NFDConfig
from ..ring import KVRing
from .model import NFDModel


class KVCache:
    """Per layer K and V of `sink_frames + window` frames over the ring of nfd_rt.ring (sinks in slots [0, S), a
    ring of `window` slots over the rest; the frame being generated stays beside the cache until it is done)."""

    def __init__(self, cfg: NFDConfig, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg
        shape = (cfg.depth, cfg.cache_frames, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.ring = KVRing.of(cfg)

    @property
    def slot_frame(self) -> list[int]:
        """Frame held by each slot, -1 when empty."""
        return self.ring.slot_frame

    def clear(self) -> None:
        self.ring.clear()

    def slot_for(self, frame: int) -> int | None:
        """Slot that frame `frame` is written to (None when the cache keeps no frames beyond the sinks)."""
        return self.ring.slot_for(frame)

    def visible_slots(self, frame: int) -> list[int]:
        """Slots of the cached frames `frame` sees, in frame order."""
        return self.ring.visible_slots(frame)


class ReferenceSession:
    """Frame-step API over an `NFDModel` (or a `.nfd` path). Same methods as `nfd_rt.Session`."""

    def __init__(self, model_or_path: NFDModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32"):
        if isinstance(model_or_path, (str, os.PathLike)):
            from ..nfd_file import load

            model = load(model_or_path)
        elif isinstance(model_or_path, NFDModel):
            model = model_or_path
        else:
            raise TypeError(f"expected an NFDModel or a path to a .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtypes[dtype]
        self.model = model.to(self.device, self.dtype).eval()
        self.cfg: NFDConfig = model.cfg
        self.seed = _checks.seed(seed)
        self.cache = KVCache(self.cfg, self.device, self.dtype)
        self.frame_index = 0
        self._closed = False

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def config(self) -> NFDConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then write the given context frames (uint8 [T,H,W,3]) or latents into the cache."""
        self._check_open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        if frames is not None:
            f = _checks.frames(frames, self.cfg)
            z = self.model.encode(torch.from_numpy(f).to(self.device)) if len(f) else None
        elif latents is not None:
            z = torch.from_numpy(_checks.latents(latents, self.cfg)).to(self.device, self.dtype)
        else:
            z = None
        count = 0 if z is None else z.shape[0]
        a = _checks.actions(actions, count, self.cfg)
        self.cache.clear()
        self.frame_index = 0
        for j in range(count):
            self._write_cache(z[j], torch.from_numpy(a[j]).to(self.device, self.dtype))
            self.frame_index += 1

    @torch.no_grad()
    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame's latent (float32 [C, h, w]) for `action` and append it to the context."""
        self._check_open()
        a = torch.from_numpy(_checks.action(action, self.cfg)).to(self.device, self.dtype)
        z = self._sample(a)
        self._write_cache(z, a)
        self.frame_index += 1
        return z.float().cpu().numpy()

    @torch.no_grad()
    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        z = self.step_latent(action)
        return self.decode(z)

    @torch.no_grad()
    def decode(self, latent: Any) -> np.ndarray:
        """Decode one latent [C, h, w] to uint8 [H, W, 3]."""
        z = torch.from_numpy(_checks.latents(latent, self.cfg)).to(self.device, self.dtype)
        return self.model.decode(z)[0].cpu().numpy()

    def close(self) -> None:
        self._closed = True
        self.cache = None

    def __enter__(self) -> "ReferenceSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    def _noise(self, step: int) -> torch.Tensor:
        shape = (self.cfg.latent_channels, self.cfg.latent_height, self.cfg.latent_width)
        return torch.from_numpy(rng.latent_noise(self.seed, self.frame_index, step, shape)).to(self.device, self.dtype)

    def _sample(self, a: torch.Tensor) -> torch.Tensor:
        """Euler flow-matching from t=1 (Philox noise, step slot 0) along the schedule to t=0."""
        schedule = list(self.cfg.schedule) + [0.0]
        x = self._noise(0)
        for k in range(self.cfg.num_steps):
            v = self._forward(x, schedule[k], a, write=False)
            x = x + (schedule[k + 1] - schedule[k]) * v
        return x

    def _write_cache(self, z: torch.Tensor, a: torch.Tensor) -> None:
        """Cache-write pass: the finished latent noised to `context_noise` (Philox step slot `num_steps`)."""
        cn = self.cfg.context_noise
        x = (1.0 - cn) * z + cn * self._noise(self.cfg.num_steps)
        self._forward(x, cn, a, write=True)

    def _forward(self, x: torch.Tensor, t: float, a: torch.Tensor, write: bool) -> torch.Tensor:
        """One DiT pass of the current frame against the cache; with `write`, store its K/V afterwards."""
        cfg, cache, i = self.cfg, self.cache, self.frame_index
        slots = cache.visible_slots(i)
        new_k, new_v = [], []

        def attend(layer, q, k, v):  # q, k, v: [1, 1, N, H, hd]
            keys = torch.cat([cache.k[layer, slots].flatten(0, 1), k[0, 0]], dim=0)  # [L, H, hd]
            vals = torch.cat([cache.v[layer, slots].flatten(0, 1), v[0, 0]], dim=0)
            out = F.scaled_dot_product_attention(q[0, 0].transpose(0, 1), keys.transpose(0, 1), vals.transpose(0, 1))
            new_k.append(k[0, 0])
            new_v.append(v[0, 0])
            return out.transpose(0, 1)[None, None]

        t_ = torch.full((1, 1), t, device=self.device, dtype=torch.float32)
        vel = self.model.dit.forward_frames(x[None, None], t_.to(self.dtype), a[None, None], torch.tensor([i]), attend)
        if write:
            slot = cache.slot_for(i)
            if slot is not None:
                cache.k[:, slot] = torch.stack(new_k)
                cache.v[:, slot] = torch.stack(new_v)
                cache.ring.commit(i)
        return vel[0, 0]
