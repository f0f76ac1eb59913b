"""The frame-step API every session of nfd_rt has, as a typing Protocol.

Four classes implement it: `nfd_rt.Session` (the C++ runtime), `nfd_rt.reference.ReferenceSession` (the PyTorch
oracle), `nfd_rt.onnx_runtime.OnnxSession` (the ONNX export under ONNX Runtime) and `nfd_rt.baselines.static.StaticSession`
(the static PyTorch baseline of the benchmarks). Code that only steps worlds (benchmarks, the Gymnasium
environments, a user's agent loop) can take any of them; tests/runtime/test_conformance.py runs one suite over all four
against the reference.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FrameSession(Protocol):
    """One world: a KV cache over the frames so far, a frame index and a noise stream keyed by its seed."""

    @property
    def config(self) -> Any:
        """The model's config dataclass (nfd_rt.configs)."""

    frame_index: int  # the next frame step() returns (frames so far, context frames included)

    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget every frame; then, where supported, write context frames (uint8 [T, H, W, 3]) or latents
        (float32 [T, C, h, w]) with their actions (float32 [T, action_dim], zeros when None)."""

    def step(self, action: Any) -> np.ndarray:
        """The next frame for `action` (float32 [action_dim]): uint8 [H, W, 3]."""

    def step_latent(self, action: Any) -> np.ndarray:
        """The next frame's latent (float32 [C, h, w]) without decoding it (where the session can skip it)."""

    def close(self) -> None:
        """Release the session's memory; a closed session refuses further calls or is simply gone."""
