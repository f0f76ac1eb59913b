"""Shared by the `nfd-rt serve` tests: the server subprocess and the load script (benchmarks/serve_load.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    """benchmarks/serve_load.py as a module: its ServerProcess starts `nfd-rt serve` the way a user does."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def need_serve_extra():
    for mod in ("fastapi", "uvicorn", "prometheus_client", "PIL", "websockets"):
        pytest.importorskip(mod, reason=f"needs the serve extra (pip install '.[serve]'): {mod} is missing")
    if importlib.util.find_spec("nfd_rt._core") is None:
        pytest.skip("nfd_rt._core is not built")


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# -- driving an in-process Server (fake sockets, the server's replaceable clock, real sessions) --------------------
class BlockingSocket:
    """A WebSocket whose sends wait until `release` is set (a client that stopped reading); `waiting` is set
    once a send waits."""

    def __init__(self, reading: bool = False):
        self.release = asyncio.Event()
        if reading:
            self.release.set()
        self.waiting = asyncio.Event()
        self.sent: list = []
        self.closed = None

    async def send_text(self, text):
        await self._wait()
        self.sent.append(text)

    async def send_bytes(self, data):
        await self._wait()
        self.sent.append(data)

    async def _wait(self):
        if not self.release.is_set():
            self.waiting.set()
        await self.release.wait()

    async def close(self, code, reason=""):
        self.closed = (code, reason)


async def until(condition, timeout: float = 60) -> None:
    """Wait for `condition()` (the timeout only guards against a hang; nothing depends on how long it takes)."""
    async def poll():
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


async def act_and_wait(srv, p, keys: str = '["ArrowRight"]') -> None:
    """One action, then wait until its frame has been made (one tick)."""
    before = p.frame_index
    srv.on_message(p, '{"type": "keys", "keys": %s}' % keys)
    await until(lambda: p.frame_index > before)


# -- a player's video, as a session never parked or moved makes it --------------------------------------------------
ROOM = 25
KEYS = ["ArrowRight", "ArrowRight", "ArrowDown", None, "ArrowLeft", "ArrowUp", "ArrowRight", None, "ArrowDown",
        "ArrowDown", "ArrowLeft", None, "ArrowUp", "ArrowRight", "ArrowRight", None, "ArrowDown", "ArrowLeft"]


def keys_msg(key) -> str:
    return json.dumps({"type": "keys", "keys": [key] if key else []})


def reference_frames(keys, seed: int = ROOM) -> list[np.ndarray]:
    """A session never parked: the room's context frame, then one frame per key, each stepped as the server steps
    a player alone in its tick (one nfd_rt.step_batch of one session)."""
    import nfd_rt
    from nfd_rt.demo import MODEL_PATH, game
    from nfd_rt.serve import protocol

    m = nfd_rt.Model(MODEL_PATH, threads=1)
    with m.session(seed=seed) as s:
        ctx = game.GridWorld(seed).render()
        s.reset(frames=ctx[None])
        out = [ctx]
        for k in keys:  # the action vector the server makes of the message
            a = protocol.parse_message(keys_msg(k), m.config.action_dim, protocol.GRIDWORLD_KEYS).vector
            out.append(nfd_rt.step_batch([s], a[None])[0])
    return out
