"""Parked and kept worlds: players' sessions as snapshots (docs/snapshots.md), held between inputs or connections.

A player idle for `--park-after` seconds is *parked*: its session is snapshotted and closed (its KV cache and
activations freed) and the snapshot goes into a `WorldStore` under the player's resume token; its next input
takes it back and restores the session before the step. A player who disconnects leaves its world in the store
for `--resume-within` seconds, for a new connection with `?resume=TOKEN`, on this server or (Ray Serve) on any
replica.

The store holds at most `max_bytes` (`--max-parked-bytes`). When a new world would take it over, worlds are
dropped, oldest first: first those of players who disconnected, then those of parked players; a player whose world
was dropped is told when it comes back (close code 4507), on this server at once.

`WorldStore` is plain, single-threaded Python: the server uses it from its event loop (`LocalWorlds`), and on Ray
Serve one deployment replica holds it for every replica of the application (`nfd_rt.serve.ray.WorldStoreDeployment`
behind `RayWorlds`). The server only sees the async interface of `LocalWorlds` / `RayWorlds`.
"""

from __future__ import annotations

import collections
import os
import re
import time
from dataclasses import dataclass

import numpy as np

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")  # what a resume token looks like (secrets.token_urlsafe(24))
TOMBSTONES = 4096  # remembered reasons of worlds that left the store (for the error a late player gets)

# Why a world is not in the store (the reason a player that asks for it is told).
GONE_DROPPED = "dropped: the server's parked worlds reached --max-parked-bytes"
GONE_EXPIRED = "expired: kept for --resume-within seconds after its player disconnected"
GONE_TAKEN = "resumed by another connection"
GONE_UNKNOWN = "no world with this resume token (never parked or disconnected here, or long gone)"
GONE_TOO_BIG = "larger than --max-parked-bytes on its own"


@dataclass
class World:
    """A parked world: the session's snapshot, the last frame its player was sent (shown first after a
    reconnect) and the seed the player joined with (its hello's `seed`)."""

    snapshot: bytes
    frame: np.ndarray | None
    seed: int

    @property
    def nbytes(self) -> int:
        return len(self.snapshot) + (0 if self.frame is None else int(self.frame.nbytes))


def world_bytes(model_path: str, model_cfg, device: str = "cpu", dtype: str = "float32") -> int:
    """An upper bound of one world's bytes for sessions of `model_path` on `device` computing in `dtype` (resolved
    names, not "auto"): the runtime's bound of its snapshot (full caches, any decoder state, the metadata;
    `estimate_memory(...)["snapshot_max"]`, computed without allocating, for every architecture) and one frame
    message's pixels (a step's `frames_per_step` frames: what the server keeps to show after a reconnect)."""
    from .._native import core

    snapshot = int(core().estimate_memory(model_path, device, dtype, 1)["snapshot_max"])
    h, w = model_cfg.video_size
    return snapshot + model_cfg.frames_per_step * h * w * 3


def memory_limit() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_max_bytes() -> int:
    """`--max-parked-bytes auto`: a quarter of the memory this process may use."""
    return memory_limit() // 4


_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int | None:
    """`--max-parked-bytes`: "auto" (None), bytes ("1048576") or a number with a binary suffix ("512M", "1.5G",
    also "512MiB"). Raises ValueError naming the problem."""
    t = text.strip()
    if t.lower() == "auto":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", t, re.IGNORECASE)
    if not m:
        raise ValueError(f"expected 'auto', a number of bytes or one with a suffix K, M, G, T (e.g. 4G), got {text!r}")
    v = int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])
    if v < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return v


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class _Entry:
    world: World
    connected: bool  # True: its player is still connected (parked); False: kept for a reconnect
    since: float  # when it was put (eviction order: oldest first)
    deadline: float  # when it expires (inf: never)


class WorldStore:
    """Worlds by resume token, within `max_bytes`. Not thread-safe: one caller (an event loop) at a time.

    keep_s: how long a disconnected player's world is kept (`--resume-within`; 0: dropped at once).
    lease_s: how long a parked (connected) world is kept without `touch` from its server; None: for ever (the
    store lives in the server's own process, which releases its players' worlds when they leave). On Ray Serve a
    replica that dies stops touching: its parked players' worlds then expire `lease_s + keep_s` after the last
    touch, which leaves them time to reconnect to another replica.
    """

    def __init__(self, max_bytes: int | None = None, keep_s: float = 300.0, lease_s: float | None = None,
                 clock=time.monotonic):
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self.keep_s, self.lease_s, self.clock = float(keep_s), lease_s, clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # oldest first
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.bytes = 0
        self.counts = {"put": 0, "taken": 0, "dropped": 0, "expired": 0}

    # -- the interface --------------------------------------------------------------------------------------
    def put(self, token: str, world: World, connected: bool) -> list[str]:
        """Store (or replace) the world of `token`. Returns the tokens whose worlds were dropped to make room;
        `token` itself when the world alone is over `max_bytes` (it is then not stored)."""
        now = self.clock()
        self._expire(now)
        self._remove(token)
        if world.nbytes > self.max_bytes:
            self._bury(token, GONE_TOO_BIG)
            self.counts["dropped"] += 1
            return [token]
        dropped = []
        while self.bytes + world.nbytes > self.max_bytes:
            victim = next((t for t, e in self._entries.items() if not e.connected), None)
            if victim is None:
                victim = next(iter(self._entries))
            self._remove(victim)
            self._bury(victim, GONE_DROPPED)
            self.counts["dropped"] += 1
            dropped.append(victim)
        self._entries[token] = _Entry(world, connected, now, self._deadline(now, connected))
        self.bytes += world.nbytes
        self.counts["put"] += 1
        return dropped

    def take(self, token: str) -> tuple[World | None, str | None]:
        """Remove and return the world of `token`, or (None, why it is not here)."""
        self._expire(self.clock())
        e = self._remove(token)
        if e is None:
            return None, self._gone.get(token, GONE_UNKNOWN)
        self._bury(token, GONE_TAKEN)
        self.counts["taken"] += 1
        return e.world, None

    def release(self, token: str) -> None:
        """The player of a parked world disconnected: keep it `keep_s` seconds from now (0: drop it now)."""
        now = self.clock()
        e = self._entries.get(token)
        if e is not None:
            if self.keep_s <= 0:
                self._remove(token)
                self._bury(token, GONE_EXPIRED)
                self.counts["expired"] += 1
            else:
                e.connected, e.deadline = False, now + self.keep_s
        self._expire(now)

    def touch(self, tokens) -> None:
        """Renew the lease of parked worlds whose players are still connected."""
        now = self.clock()
        for t in tokens:
            e = self._entries.get(t)
            if e is not None and e.connected:
                e.deadline = self._deadline(now, True)
        self._expire(now)

    def stats(self) -> dict:
        self._expire(self.clock())
        parked = sum(1 for e in self._entries.values() if e.connected)
        return {"worlds": len(self._entries), "parked": parked, "kept": len(self._entries) - parked,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "keep_s": self.keep_s, **self.counts}

    # -- internals ------------------------------------------------------------------------------------------
    def _deadline(self, now: float, connected: bool) -> float:
        if not connected:
            return now + self.keep_s
        return float("inf") if self.lease_s is None else now + self.lease_s + self.keep_s

    def _remove(self, token: str) -> _Entry | None:
        e = self._entries.pop(token, None)
        if e is not None:
            self.bytes -= e.world.nbytes
        return e

    def _bury(self, token: str, why: str) -> None:
        self._gone[token] = why
        self._gone.move_to_end(token)
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    def _expire(self, now: float) -> None:
        for t in [t for t, e in self._entries.items() if e.deadline <= now]:
            self._remove(t)
            self._bury(t, GONE_EXPIRED)
            self.counts["expired"] += 1


class LocalWorlds:
    """The store in the server's own process (plain `nfd-rt serve`): the async interface the server uses."""

    durable = False  # dies with the server: nothing to save when the server stops

    def __init__(self, store: WorldStore):
        self.store = store

    @property
    def max_bytes(self) -> int:
        return self.store.max_bytes

    async def put(self, token: str, world: World, connected: bool) -> list[str]:
        return self.store.put(token, world, connected)

    async def take(self, token: str, wait: bool = False) -> tuple[World | None, str | None]:
        return self.store.take(token)  # `wait` is for a shared store (Ray): here the server knows its players

    async def release(self, token: str) -> None:
        self.store.release(token)

    async def touch(self, tokens: list[str]) -> None:
        self.store.touch(tokens)

    async def stats(self) -> dict:
        return self.store.stats()
