"""The serving core: players, the tick scheduler and the metrics, independent of the web framework.

One `Server` holds every player of one process (one Ray Serve replica, or the whole `nfd-rt serve`). Each
player owns one `nfd_rt.Session`. A tick runs at `--fps`: it collects every player with an action (or a reset)
pending, hands them to one worker thread, which calls `step_many` once for all of them, encodes the frames and
returns; the event loop then puts each frame in its player's one-frame outbox. The player's own sender task
sends the outbox whenever the socket can take it, so a slow client only ever gets the newest frame (the others
are counted as dropped) and never holds up the tick.

All session work (open, reset, step, close) happens on that single worker thread: the event loop never waits
on the runtime, and no two threads ever touch a session.
"""

from __future__ import annotations

import asyncio
import collections
import io
import itertools
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import protocol

log = logging.getLogger("nfd_rt.serve")


def step_many(sessions: list, actions: list) -> list:
    """One tick's frames for many sessions: uint8 [H, W, 3] per session, in order.

    Uses `nfd_rt.step_batch(sessions, actions)` (one batched forward of sessions sharing a model) when this
    build of the runtime has it, and otherwise steps the sessions one after the other. This is the only place
    the scheduler calls the runtime's step, so switching to batching needs no other change.
    """
    import nfd_rt

    if hasattr(nfd_rt, "step_batch"):
        return list(nfd_rt.step_batch(sessions, actions))
    return [s.step(a) for s, a in zip(sessions, actions)]


def encode_frame(frame: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> JPEG or PNG bytes (Pillow). JPEG keeps full chroma: the demo's pixels are tiny."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(frame, "RGB")
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "JPEG", quality=jpeg_quality, subsampling=0)
    return buf.getvalue()


@dataclass
class ServeConfig:
    """Everything `nfd-rt serve` takes; also what each Ray Serve replica is built from (so: plain data)."""

    model: str = ""  # .nfd path; "" = the shipped demo model
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # CPU threads per session (0 = physical cores)
    fps: float = 20.0  # ticks per second = most frames a player gets per second
    max_players: int = 32
    token: str | None = None
    idle_timeout: float = 60.0  # seconds without a message from the client
    send_timeout: float = 10.0  # seconds a frame may wait for a client that does not read
    max_errors: int = 10  # malformed messages in a row before the connection is closed
    max_messages_per_second: int = 200
    stats_interval: float = 1.0
    jpeg_quality: int = 90
    world: str = "auto"  # auto | gridworld | blank (see protocol.make_world)
    keymap: str | None = None  # JSON file: key name -> action dimension
    default_seed: int = 13  # reset seed of a new player without ?seed= (13: a room where the demo does well)

    def resolved_model(self) -> str:
        from ..demo import MODEL_PATH, MODELS

        path = MODELS.get(self.model, self.model) or MODEL_PATH  # a shipped model by name: gridworld-1step
        if not os.path.exists(path):
            raise OSError(f"model file {path} not found")
        return path

    def check(self) -> None:
        problems = []
        if not 0 < self.fps <= 240:
            problems.append(f"fps must be in (0, 240], got {self.fps}")
        if self.max_players < 1:
            problems.append(f"max_players must be >= 1, got {self.max_players}")
        if self.idle_timeout <= 0 or self.send_timeout <= 0:
            problems.append("idle_timeout and send_timeout must be > 0")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.token is not None and not self.token:
            problems.append("token must not be empty (leave it out to allow everyone)")
        if problems:
            raise ValueError("; ".join(problems))


def check_files(cfg: ServeConfig):
    """The model file and the key map: (model path, model config, world). Raises ValueError / OSError naming
    what is wrong."""
    from .. import configs
    from .._native import core

    cfg.check()
    path = cfg.resolved_model()
    info = core().inspect_file(path)  # validates the whole file now, not at the first player
    model_cfg = configs.from_json(info["config"])  # any architecture (NFD, Oasis, ...)
    if cfg.keymap is not None and not os.path.isfile(cfg.keymap):
        raise OSError(f"--keymap {cfg.keymap}: no such file")
    world = protocol.make_world(cfg.world, path, cfg.keymap, model_cfg.action_dim)
    return path, model_cfg, world


class ServerFull(Exception):
    pass


@dataclass(eq=False)
class Player:
    """One connection's state. Only the event loop touches these fields; only the worker touches `session`."""

    id: str
    fmt: str
    seed: int
    joined: float = field(default_factory=time.monotonic)
    last_message: float = field(default_factory=time.monotonic)
    session: object = None  # nfd_rt.Session, owned by the worker thread
    session_seed: int | None = None
    pending_action: np.ndarray | None = None
    pending_since: float = 0.0  # when the pending action arrived (server-side action-to-frame latency)
    pending_reset: int | None = None
    outbox: bytes | None = None  # the newest encoded frame not yet sent (latest-frame-wins)
    texts: collections.deque = field(default_factory=lambda: collections.deque(maxlen=16))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_request: tuple[int, str] | None = None
    frame_index: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    errors_in_a_row: int = 0
    message_times: collections.deque = field(default_factory=collections.deque)
    gone: bool = False

    def request_close(self, code: int, reason: str) -> None:
        if self.close_request is None:
            self.close_request = (code, reason)
        self.wake.set()

    def say(self, msg: str) -> None:
        self.texts.append(msg)  # a bounded deque: a client that never reads cannot grow it
        self.wake.set()


class Metrics:
    """Prometheus metrics of one Server, in its own registry (several servers may share a process: tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc.: memory stays flat
        self.players = Gauge("nfd_serve_players", "Players connected", registry=r)
        self.frames = Counter("nfd_serve_frames", "Frames sent to players", registry=r)
        self.dropped = Counter("nfd_serve_frames_dropped", "Frames replaced by a newer one before a slow client "
                               "took them (latest-frame-wins)", registry=r)
        self.steps = Histogram("nfd_serve_step_seconds", "Wall time of one tick's batched step (all players, "
                               "encoding included)", registry=r,
                               buckets=(.002, .005, .01, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5))
        self.batch = Histogram("nfd_serve_batch_size", "Players stepped in one tick", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.latency = Histogram("nfd_serve_action_to_frame_seconds", "From an action's arrival to its encoded "
                                 "frame being ready to send (server side)", registry=r,
                                 buckets=(.005, .01, .025, .05, .075, .1, .15, .25, .5, 1))
        self.connections = Counter("nfd_serve_connections", "WebSocket connections by outcome", ["outcome"],
                                   registry=r)
        self.closes = Counter("nfd_serve_closes", "Connections closed by the server, by close code", ["code"],
                              registry=r)
        self.client_errors = Counter("nfd_serve_client_errors", "Malformed client messages", registry=r)
        self.server_errors = Counter("nfd_serve_server_errors", "Failures inside the server (a session that "
                                     "failed to open or step)", registry=r)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Server:
    """Players, sessions and the tick loop of one process; the loop starts with the first player (`start()`)."""

    def __init__(self, cfg: ServeConfig, replica: str | None = None):
        self.cfg = cfg
        self.model_path, self.model_cfg, self.world = check_files(cfg)
        self.device, self.dtype = _pick_device(cfg.device, cfg.dtype)
        # nfd_rt.Model shared by every player's session: loaded by `nfd-rt serve` before it listens (open_model), or
        # else by the worker thread at the first player.
        self._model = None
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}"
        self.players: dict[str, Player] = {}
        self.metrics = Metrics()
        self._ids = itertools.count(1)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="nfd-serve-step")
        self._task: asyncio.Task | None = None
        self._departed: list[Player] = []  # players who left; their sessions are closed by the next tick
        self._recent_ticks: collections.deque = collections.deque(maxlen=100)  # (time, frames)
        self._tick_ms: collections.deque = collections.deque(maxlen=100)
        self.stopping = False
        # The server's clock (idle timeouts, message rates, latencies, FPS). Tests replace it to make an idle
        # player idle without waiting in real time.
        self.clock = time.monotonic

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the tick loop in the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self.stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="nfd-serve-ticks")

    async def stop(self) -> None:
        self.stopping = True
        for p in list(self.players.values()):
            p.request_close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down either way
                pass
        everyone = list(self.players.values()) + self._departed
        self._departed = []
        # Closed on the worker thread, after any step still running there (which may have just opened one).
        await asyncio.get_running_loop().run_in_executor(self._worker, _close_sessions_of, everyone)
        self._worker.shutdown(wait=True)

    # -- players --------------------------------------------------------------------------------------------
    def join(self, fmt: str, seed: int) -> Player:
        if self.stopping:
            raise ServerFull("server is shutting down")
        if len(self.players) >= self.cfg.max_players:
            raise ServerFull(f"server full: {self.cfg.max_players} players already playing, try again later")
        now = self.clock()
        p = Player(id=f"{next(self._ids)}-{secrets.token_hex(4)}", fmt=fmt, seed=seed, joined=now, last_message=now)
        p.pending_reset = seed  # the first tick opens the session and sends the starting frame
        self.players[p.id] = p
        self.metrics.players.set(len(self.players))
        self.start()
        return p

    def leave(self, p: Player) -> None:
        """The connection is gone; its session is closed by the next tick (never under a running step)."""
        p.gone = True
        if self.players.pop(p.id, None) is not None:
            self._departed.append(p)
            self.metrics.players.set(len(self.players))

    def on_message(self, p: Player, text: object) -> None:
        """Handle one client message (never raises): queue the action/reset, or answer with an error."""
        now = self.clock()
        p.last_message = now
        times = p.message_times
        times.append(now)
        while times and now - times[0] > 1.0:
            times.popleft()
        if len(times) > self.cfg.max_messages_per_second:
            p.request_close(protocol.CLOSE_TOO_MANY_MESSAGES,
                            f"more than {self.cfg.max_messages_per_second} messages per second")
            return
        try:
            msg = protocol.parse_message(text, self.model_cfg.action_dim, self.world.keymap)
        except protocol.ProtocolError as e:
            self.metrics.client_errors.inc()
            p.errors_in_a_row += 1
            if p.errors_in_a_row >= self.cfg.max_errors:
                p.request_close(protocol.CLOSE_MALFORMED, f"{p.errors_in_a_row} malformed messages in a row")
            else:
                p.say(_json({"type": "error", "message": str(e)}))
            return
        p.errors_in_a_row = 0
        if isinstance(msg, protocol.Action):
            p.pending_action = msg.vector  # latest action wins until the next tick takes it
            p.pending_since = now
        elif isinstance(msg, protocol.Reset):
            p.pending_reset = msg.seed
            p.pending_action = None

    def hello(self, p: Player) -> dict:
        c = self.model_cfg
        return {"type": "hello", "session": p.id, "replica": self.replica, "model": c.name,
                "width": c.frame_width, "height": c.frame_height, "action_dim": c.action_dim, "fps": self.cfg.fps,
                "format": p.fmt, "seed": p.seed, "world": self.world.name,
                "keys": sorted(self.world.keymap) if self.world.keymap else None}

    def stats(self, p: Player) -> dict:
        return {"type": "stats", "frame": p.frame_index, "sent": p.frames_sent, "dropped": p.frames_dropped,
                "players": len(self.players), "server_fps": round(self.frames_per_second(), 1),
                "step_ms": round(float(np.median(self._tick_ms)), 2) if self._tick_ms else None}

    def health(self) -> dict:
        return {"status": "stopping" if self.stopping else "ok", "model": self.model_cfg.name,
                "model_file": os.path.basename(self.model_path), "device": self.device, "players": len(self.players),
                "max_players": self.cfg.max_players, "fps": self.cfg.fps,
                "frames_per_second": round(self.frames_per_second(), 1), "replica": self.replica,
                "batched": _has_step_batch()}

    def frames_per_second(self) -> float:
        """Frames produced per second over the last few seconds (all players)."""
        now = self.clock()
        recent = [(t, n) for t, n in self._recent_ticks if now - t <= 5.0]
        if not recent:
            return 0.0
        return sum(n for _, n in recent) / max(now - recent[0][0], 1.0 / self.cfg.fps)

    # -- the tick loop --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.cfg.fps
        next_t = loop.time()
        while not self.stopping:
            try:
                await self._tick(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive anything; the failure is logged + counted
                log.exception("tick failed")
                self.metrics.server_errors.inc()
            next_t += period
            delay = next_t - loop.time()
            if delay < 0:  # overloaded: run the next tick now, but do not try to catch up with a burst
                next_t, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def _tick(self, loop) -> None:
        now = self.clock()
        jobs = []
        for p in list(self.players.values()):
            if p.close_request:
                continue
            if now - p.last_message > self.cfg.idle_timeout:
                p.request_close(protocol.CLOSE_IDLE, f"idle for more than {self.cfg.idle_timeout:g} s")
                continue
            if p.pending_reset is not None:
                jobs.append((p, "reset", p.pending_reset, 0.0))
                p.pending_reset = None
            elif p.pending_action is not None:
                jobs.append((p, "step", p.pending_action, p.pending_since))
                p.pending_action = None
        # No worker call runs between ticks, so the departed players' sessions can be taken here.
        closing = [p.session for p in self._departed if p.session is not None]
        for p in self._departed:
            p.session = None
        self._departed = []
        if not jobs and not closing:
            return
        t0 = time.perf_counter()
        results = await loop.run_in_executor(self._worker, self._work, jobs, closing)
        dt = time.perf_counter() - t0
        stepped = sum(1 for j in jobs if j[1] == "step")
        if stepped:
            self.metrics.steps.observe(dt)
            self.metrics.batch.observe(stepped)
            self._tick_ms.append(dt * 1e3)
        self._recent_ticks.append((self.clock(), len(results)))
        sent_at = self.clock()
        for (p, kind, _, since), (data, index, error) in zip(jobs, results):
            if error is not None:
                self.metrics.server_errors.inc()
                p.request_close(protocol.CLOSE_INTERNAL_ERROR, f"session failed: {error}"[:120])
                continue
            if p.gone or data is None:  # left meanwhile, or a reset without a context frame to show
                p.frame_index = index
                continue
            if p.outbox is not None:
                p.frames_dropped += 1
                self.metrics.dropped.inc()
            p.outbox = data
            p.frame_index = index
            if kind == "step":
                self.metrics.latency.observe(sent_at - since)
            p.wake.set()

    def _work(self, jobs: list, closing: list) -> list:
        """Worker thread: close left sessions, then resets, then one step_many for every action; encode."""
        _close_all(closing)
        results: list = [None] * len(jobs)
        steps = []
        for i, (p, kind, arg, _) in enumerate(jobs):
            if kind == "reset":
                try:
                    frames = self._reset(p, arg)
                    data = encode_frame(frames[-1], p.fmt, self.cfg.jpeg_quality) if len(frames) else None
                    results[i] = (data, p.session.frame_index, None)
                except Exception as e:  # noqa: BLE001 - reported to this player only
                    log.exception("reset failed")
                    results[i] = (None, 0, e)
            elif p.session is None:
                results[i] = (None, 0, RuntimeError("no session"))
            else:
                steps.append(i)
        if steps:
            sessions = [jobs[i][0].session for i in steps]
            try:
                frames = step_many(sessions, [jobs[i][2] for i in steps])
            except Exception as e:  # noqa: BLE001 - a batch failed: find out whose session it was
                log.exception("batched step failed; stepping one by one")
                frames = []
                for s, i in zip(sessions, steps):
                    try:
                        frames.append(s.step(jobs[i][2]))
                    except Exception as e1:  # noqa: BLE001
                        frames.append(e1)
            for i, f in zip(steps, frames):
                p = jobs[i][0]
                if isinstance(f, Exception):
                    results[i] = (None, 0, f)
                else:
                    results[i] = (encode_frame(f, p.fmt, self.cfg.jpeg_quality), p.session.frame_index, None)
        return results

    def open_model(self) -> None:
        """Load the model the players' sessions share (once). Raises what the runtime says about the device and
        dtype (no GPU, a dtype the CPU does not compute in), so `nfd-rt serve` calls it before it listens."""
        from ..session import Model

        if self._model is None:
            self._model = Model(self.model_path, device=self.device, dtype=self.dtype, threads=self.cfg.threads)

    def _reset(self, p: Player, seed: int) -> np.ndarray:
        """Worker thread: (re)open the player's session with noise seed `seed` and write the world's context.

        Every player's session is a session of one shared `nfd_rt.Model` (loaded at the first player, on this
        thread): one copy of the weights, and sessions `step_many` can batch."""
        self.open_model()
        if p.session is None or p.session_seed != seed:
            if p.session is not None:
                p.session.close()
            p.session = self._model.session(seed=seed)
            p.session_seed = seed
        frames = self.world.context(seed, self.model_cfg)
        p.session.reset(frames=frames if len(frames) else None)
        return frames

def _close_all(sessions) -> None:
    for s in sessions:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.exception("closing a session failed")


def _close_sessions_of(players) -> None:
    _close_all([p.session for p in players if p.session is not None])
    for p in players:
        p.session = None


def _has_step_batch() -> bool:
    import nfd_rt

    return hasattr(nfd_rt, "step_batch")


def _pick_device(device: str, dtype: str) -> tuple[str, str]:
    from ..cli import _pick_device as pick

    return pick(device, dtype)


def _json(obj) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))
