"""The serving core: players, the tick scheduler and the metrics, independent of the web framework.

One `Server` holds every player of one process (one Ray Serve replica, or the whole `nfd-rt serve`). Each
player owns one `nfd_rt.Session`. A tick runs at `--fps`: it collects every player with an action (or a reset)
pending, hands them to one worker thread, which calls `step_many` once for all of them, encodes the frames and
returns; the event loop then puts each frame in its player's one-frame outbox. The player's own sender task
sends the outbox whenever the socket can take it, so a slow client only ever gets the newest frame (the others
are counted as dropped) and never holds up the tick.

All session work (open, reset, step, snapshot, restore, close) happens on that single worker thread: the event
loop never waits on the runtime, and no two threads ever touch a session.

Parking (docs/serve.md): a player without input for `--park-after` seconds has its session snapshotted and closed
by the worker, the snapshot kept in a `worlds.WorldStore` under the player's resume token; its next input takes
it back, and the worker restores the session before that tick's step. A player who disconnects leaves its world
there for `--resume-within` seconds, for a reconnect with `?resume=TOKEN`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import io
import itertools
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .._cli_args import pick_device as _pick_device
from . import protocol
from .worlds import LocalWorlds, World, WorldStore, human, world_bytes

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


def stacked(frames: np.ndarray) -> np.ndarray:
    """One step's frames as one image (a copy): uint8 [H, W, 3] as it is; [F, H, W, 3] (Waypoint: F = 4 per step)
    stacked top to bottom in time order, [F * H, W, 3]. Each frame message of `nfd-rt serve` is one such image."""
    f = np.asarray(frames)
    return np.array(f.reshape(-1, *f.shape[-2:]) if f.ndim == 4 else f)


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
    park_after: float = 30.0  # seconds without input before a player's session is parked (0: never)
    max_parked_bytes: int | None = None  # bytes of parked and kept worlds (None: a quarter of the memory)
    resume_within: float = 300.0  # seconds a disconnected player's world is kept for ?resume= (0: not kept)

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
        if not (0 <= self.park_after < float("inf")) or not (0 <= self.resume_within < float("inf")):
            problems.append("park_after and resume_within must be finite numbers >= 0 (0: off)")
        if self.max_parked_bytes is not None and self.max_parked_bytes < 1:
            problems.append(f"max_parked_bytes must be >= 1 (or None: auto), got {self.max_parked_bytes}")
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
    world = protocol.make_world(cfg.world, path, cfg.keymap, model_cfg.action_dim, model_cfg)
    return path, model_cfg, world


class ServerFull(Exception):
    pass


@dataclass(eq=False)
class Player:
    """One connection's state. Only the event loop touches these fields; only the worker touches `session`,
    `session_bytes` and `last_frame` (and `resume_world`, once the event loop has handed it over)."""

    id: str
    fmt: str
    seed: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # names its world in the store
    joined: float = field(default_factory=time.monotonic)
    last_message: float = field(default_factory=time.monotonic)  # any message (idle timeout)
    last_input: float = field(default_factory=time.monotonic)  # an action or a reset (parking)
    session: object = None  # nfd_rt.Session, owned by the worker thread
    session_seed: int | None = None
    session_bytes: int = 0  # what the open session holds on its device (weights excluded)
    last_frame: np.ndarray | None = None  # the newest frame message's image (`stacked`; kept with its world)
    parked: bool = False  # its world is in the store, its session closed
    parked_bytes: int = 0
    resume_world: World | None = None  # taken from the store; the worker restores it at the next job
    resumed: bool = False  # this connection continued a world with ?resume=
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
    departed: asyncio.Event = field(default_factory=asyncio.Event)  # set once the server has let it go
    failed: bool = False  # its session failed: nothing of it is kept

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
        # Parking (docs/serve.md, "Parking idle players").
        self.active = Gauge("nfd_serve_players_active", "Players whose session is in memory (not parked)",
                            registry=r)
        self.parked = Gauge("nfd_serve_players_parked", "Connected players whose world is parked", registry=r)
        self.session_bytes = Gauge("nfd_serve_session_bytes", "Device memory held by the sessions in memory (KV "
                                   "cache and activations; the shared weights excluded)", registry=r)
        self.parked_bytes = Gauge("nfd_serve_parked_bytes", "Bytes of the parked worlds of this server's players",
                                  registry=r)
        self.stored_worlds = Gauge("nfd_serve_stored_worlds", "Worlds in the store: parked, and kept for a "
                                   "reconnect (on Ray Serve: the application's shared store)", registry=r)
        self.stored_bytes = Gauge("nfd_serve_stored_bytes", "Bytes of the worlds in the store", registry=r)
        self.parks = Counter("nfd_serve_parks", "Sessions parked after --park-after seconds without input",
                             registry=r)
        self.resumes = Counter("nfd_serve_resumes", "Sessions restored from a parked or kept world, by cause: "
                               "input (a parked player's next input) or reconnect (?resume=)", ["cause"], registry=r)
        self.saves = Counter("nfd_serve_worlds_saved", "Worlds of disconnecting players kept for a reconnect",
                             registry=r)
        self.resume_failures = Counter("nfd_serve_resume_failures", "A parked player or a ?resume= whose world "
                                       "was not in the store, by reason", ["reason"], registry=r)
        buckets = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
        self.park_seconds = Histogram("nfd_serve_park_seconds", "Time to snapshot and close one session (worker): "
                                      "parking, or keeping the world of a player who left",
                                      registry=r, buckets=buckets)
        self.resume_seconds = Histogram("nfd_serve_resume_seconds", "Time to restore one session from its "
                                        "snapshot (worker)", registry=r, buckets=buckets)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Server:
    """Players, sessions and the tick loop of one process; the loop starts with the first player (`start()`).

    worlds: where parked and disconnected players' worlds go (`worlds.LocalWorlds` in this process by default;
    `nfd_rt.serve.ray.RayWorlds` on Ray Serve, shared by the replicas)."""

    TOUCH_EVERY_S = 15.0  # how often the leases of this server's parked worlds are renewed (Ray's store)

    def __init__(self, cfg: ServeConfig, replica: str | None = None, worlds=None):
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
        self._departed: list[Player] = []  # players who left; the next tick keeps or closes their sessions
        self._by_token: dict[str, Player] = {}  # players (connected or departing) by resume token
        self._recent_ticks: collections.deque = collections.deque(maxlen=100)  # (time, frames)
        self._tick_ms: collections.deque = collections.deque(maxlen=100)
        self._last_touch = float("-inf")
        self.stopping = False
        # The server's clock (idle timeouts, parking, message rates, latencies, FPS). Tests replace it to make an
        # idle player idle without waiting in real time.
        self.clock = time.monotonic
        if worlds is None:
            worlds = LocalWorlds(WorldStore(cfg.max_parked_bytes, cfg.resume_within, clock=lambda: self.clock()))
        self.worlds = worlds
        cap = getattr(worlds, "max_bytes", None)
        one = world_bytes(self.model_path, self.model_cfg, self.device, self.dtype)
        if cap is not None and (cfg.park_after > 0 or cfg.resume_within > 0) and cap < one:
            raise ValueError(f"--max-parked-bytes {cap} cannot hold one world of model {self.model_cfg.name} "
                             f"(up to {one} bytes, {human(one)}, at a full cache); raise it, or turn parking and "
                             "keeping off with --park-after 0 --resume-within 0")

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
        loop = asyncio.get_running_loop()
        if self.worlds.durable and self.cfg.resume_within > 0:
            # A store that outlives this process (Ray Serve): its players continue on another replica.
            live = [p for p in everyone if p.session is not None and not p.failed]
            saved = await loop.run_in_executor(self._worker, self._save_all, live)
            for p, world in zip(live, saved):
                if world is not None:
                    with _logged("keeping a world at shutdown"):
                        await self.worlds.put(p.token, world, connected=False)
            for p in everyone:
                if p.parked:
                    with _logged("releasing a parked world at shutdown"):
                        await self.worlds.release(p.token)
        # Closed on the worker thread, after any step still running there (which may have just opened one).
        await loop.run_in_executor(self._worker, _close_sessions_of, everyone)
        self._worker.shutdown(wait=True)

    # -- players --------------------------------------------------------------------------------------------
    def check_room(self) -> None:
        if self.stopping:
            raise ServerFull("server is shutting down")
        if len(self.players) >= self.cfg.max_players:
            raise ServerFull(f"server full: {self.cfg.max_players} players already playing, try again later")

    def join(self, fmt: str, seed: int, token: str | None = None, world: World | None = None) -> Player:
        """A new player. With `world` (taken from the store for `token`), it continues that world; else its
        first tick opens a session with seed `seed`."""
        self.check_room()
        now = self.clock()
        p = Player(id=f"{next(self._ids)}-{secrets.token_hex(4)}", fmt=fmt, seed=seed, joined=now, last_message=now,
                   last_input=now)
        if world is not None:
            p.token, p.seed, p.resume_world, p.resumed = token, world.seed, world, True
        else:
            p.pending_reset = seed  # the first tick opens the session and sends the starting frame
        self.players[p.id] = p
        self._by_token[p.token] = p
        self.metrics.players.set(len(self.players))
        self.start()
        return p

    async def admit(self, fmt: str, seed: int, resume: str | None = None) -> tuple[Player, str | None]:
        """join(), continuing the world of resume token `resume` when the store has it: (player, None), or
        (player with a new world, why the old one could not be continued). Raises ServerFull."""
        old = self._by_token.get(resume) if resume is not None else None
        if old is not None:  # still here (connected, or its departure not yet processed): it hands over first,
            # and its place with it (a page reconnecting to a full server is not refused by its own old socket)
            old.request_close(protocol.CLOSE_WORLD_TAKEN, "this world was resumed by another connection")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(old.departed.wait(), 30.0)
        self.check_room()
        if resume is None:
            return self.join(fmt, seed), None
        try:
            world, why = await self.worlds.take(resume, wait=True)
        except Exception as e:  # noqa: BLE001 - a store that fails: a new world, and the reason
            log.exception("taking a world from the store failed")
            world, why = None, f"the world store failed: {e!r}"[:200]
        try:
            p = self.join(fmt, seed, resume, world) if world is not None else self.join(fmt, seed)
        except ServerFull:
            if world is not None:  # put it back for a later try
                with _logged("putting a world back"):
                    await self.worlds.put(resume, world, connected=False)
            raise
        if world is None:
            self.metrics.resume_failures.labels(_reason(why)).inc()
        return p, why

    def leave(self, p: Player) -> None:
        """The connection is gone; the next tick keeps its world for a reconnect or closes its session (never
        under a running step)."""
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
            msg = protocol.parse_message(text, self.model_cfg.action_dim, self.world.keymap, self.world.pointer)
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
            p.last_input = now
        elif isinstance(msg, protocol.Reset):
            p.pending_reset = msg.seed
            p.pending_action = None
            p.last_input = now
        elif isinstance(msg, protocol.Ping):
            p.say(_json({"type": "pong", "t": msg.t}))

    def hello(self, p: Player) -> dict:
        c = self.model_cfg
        h, w = c.video_size
        return {"type": "hello", "session": p.id, "replica": self.replica, "model": c.name,
                "width": w, "height": h, "frames_per_step": c.frames_per_step, "action_dim": c.action_dim,
                "fps": self.cfg.fps, "format": p.fmt, "seed": p.seed, "world": self.world.name,
                "keys": sorted(self.world.keymap) if self.world.keymap else None,
                "pointer": self.world.pointer is not None, "resume": p.token, "resumed": p.resumed}

    def stats(self, p: Player) -> dict:
        return {"type": "stats", "frame": p.frame_index, "sent": p.frames_sent, "dropped": p.frames_dropped,
                "players": len(self.players), "server_fps": round(self.frames_per_second(), 1),
                "step_ms": round(float(np.median(self._tick_ms)), 2) if self._tick_ms else None,
                "parked": p.parked}

    def health(self) -> dict:
        ps = list(self.players.values())
        return {"status": "stopping" if self.stopping else "ok", "model": self.model_cfg.name,
                "model_file": os.path.basename(self.model_path), "device": self.device, "players": len(ps),
                "max_players": self.cfg.max_players, "fps": self.cfg.fps,
                "frames_per_second": round(self.frames_per_second(), 1), "replica": self.replica,
                "batched": _has_step_batch(),
                "active": sum(1 for p in ps if p.session is not None), "parked": sum(1 for p in ps if p.parked),
                "session_bytes": sum(p.session_bytes for p in ps if p.session is not None),
                "parked_bytes": sum(p.parked_bytes for p in ps if p.parked),
                "park_after": self.cfg.park_after, "resume_within": self.cfg.resume_within}

    async def store_stats(self) -> dict:
        """The store's figures (/healthz "worlds", the nfd_serve_stored_* gauges); on Ray a call to the store's
        replica, so bounded in time: {"error": ...} when it does not answer."""
        try:
            s = await asyncio.wait_for(self.worlds.stats(), 5.0)
        except Exception as e:  # noqa: BLE001 - reported, never fatal to a health check
            return {"error": f"the world store did not answer: {e!r}"[:200]}
        self.metrics.stored_worlds.set(s["worlds"])
        self.metrics.stored_bytes.set(s["bytes"])
        return s

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
        keep = self.cfg.resume_within > 0
        # Players who left: a live session is kept as a world for a reconnect (or closed), a parked world starts
        # its --resume-within countdown. No worker call runs between ticks, so their sessions can be taken here.
        saving, closing = [], []
        departed, self._departed = self._departed, []
        for p in departed:
            if p.resume_world is not None:  # taken for a resume that never ran: back into the store
                world, p.resume_world = p.resume_world, None
                if keep and not p.failed:
                    await self._put(p, world, connected=False)
            if p.session is not None:
                (saving if keep and not p.failed else closing).append(p)
            else:
                if p.parked:
                    with _logged("releasing a parked world"):
                        await self.worlds.release(p.token)
                    p.parked, p.parked_bytes = False, 0
                self._forget(p)
        jobs = []
        park_after = self.cfg.park_after
        for p in list(self.players.values()):
            if p.close_request:
                continue
            if now - p.last_message > self.cfg.idle_timeout:
                p.request_close(protocol.CLOSE_IDLE, f"idle for more than {self.cfg.idle_timeout:g} s")
                continue
            has_input = p.pending_reset is not None or p.pending_action is not None
            if p.parked and has_input and not await self._unpark(p):
                continue
            if p.pending_reset is not None:
                jobs.append((p, "reset", p.pending_reset, 0.0))
                p.pending_reset = None
            elif p.pending_action is not None:
                jobs.append((p, "step", p.pending_action, p.pending_since))
                p.pending_action = None
            elif p.resume_world is not None:  # reconnected with ?resume=: restore, show its last frame
                jobs.append((p, "show", None, 0.0))
            elif park_after > 0 and p.session is not None and now - p.last_input >= park_after:
                jobs.append((p, "park", None, 0.0))
        if jobs or saving or closing:
            await self._run_jobs(loop, jobs, saving, closing)
        if self._tokens_parked() and now - self._last_touch >= self.TOUCH_EVERY_S:
            self._last_touch = now
            with _logged("renewing the parked worlds' leases"):
                await self.worlds.touch(self._tokens_parked())
        self._update_gauges()

    async def _run_jobs(self, loop, jobs: list, saving: list, closing: list) -> None:
        t0 = time.perf_counter()
        results, saved = await loop.run_in_executor(self._worker, self._work, jobs, saving, closing)
        dt = time.perf_counter() - t0
        for p, world in zip(saving, saved):
            if world is not None:
                await self._put(p, world, connected=False)
                self.metrics.saves.inc()
            self._forget(p)
        for p in closing:
            self._forget(p)
        stepped = sum(1 for j in jobs if j[1] == "step")
        if stepped:
            self.metrics.steps.observe(dt)
            self.metrics.batch.observe(stepped)
            self._tick_ms.append(dt * 1e3)
        made = sum(1 for j, r in zip(jobs, results) if j[1] in ("step", "reset") and r[2] is None)
        if made:
            self._recent_ticks.append((self.clock(), made))
        sent_at = self.clock()
        for (p, kind, _, since), (data, index, error) in zip(jobs, results):
            if error is not None:
                self.metrics.server_errors.inc()
                p.failed = True
                p.request_close(protocol.CLOSE_INTERNAL_ERROR, f"session failed: {error}"[:120])
                continue
            if kind == "park":
                self.metrics.parks.inc()
                if await self._put(p, data, connected=True):
                    p.parked, p.parked_bytes = True, data.nbytes
                continue
            if p.gone or data is None:  # left meanwhile, or no frame to show (a reset without a context frame)
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

    async def _put(self, p: Player, world: World, connected: bool) -> bool:
        """Store `p`'s world; close the players here whose parked worlds were dropped to make room (4507). False
        when this world itself could not be stored (and `p`, if parking, closed with 4507)."""
        try:
            dropped = await self.worlds.put(p.token, world, connected)
        except Exception as e:  # noqa: BLE001 - a store that fails (Ray: its replica down) loses this world only
            log.exception("storing a world failed")
            self.metrics.server_errors.inc()
            if connected:
                p.request_close(protocol.CLOSE_WORLD_LOST, f"your world could not be parked: {e!r}"[:120])
            return False
        for t in dropped:
            q = self._by_token.get(t)
            if q is not None and (q is p or q.parked):
                q.parked, q.parked_bytes = False, 0
                q.request_close(protocol.CLOSE_WORLD_LOST, "your parked world was dropped: the server's parked "
                                "worlds reached --max-parked-bytes")
        return p.token not in dropped

    async def _unpark(self, p: Player) -> bool:
        """A parked player's input: take its world back from the store (the worker restores it before the step).
        False (and the player closed) when it is no longer there."""
        try:
            world, why = await self.worlds.take(p.token)
        except Exception as e:  # noqa: BLE001 - the store failed: this player's world is out of reach
            log.exception("taking a parked world back failed")
            world, why = None, f"the world store failed: {e!r}"
        p.parked, p.parked_bytes = False, 0
        if world is None:
            reason = _reason(why)
            self.metrics.resume_failures.labels(reason).inc()
            code = protocol.CLOSE_WORLD_TAKEN if reason == "taken" else protocol.CLOSE_WORLD_LOST
            p.request_close(code, f"your parked world is gone: {why}"[:120])
            return False
        if p.pending_reset is None:
            p.resume_world = world
        return True

    def _forget(self, p: Player) -> None:
        if self._by_token.get(p.token) is p:
            del self._by_token[p.token]
        p.departed.set()

    def _tokens_parked(self) -> list[str]:
        return [p.token for p in self.players.values() if p.parked]

    def _update_gauges(self) -> None:
        ps = list(self.players.values())
        m = self.metrics
        m.active.set(sum(1 for p in ps if p.session is not None))
        m.parked.set(sum(1 for p in ps if p.parked))
        m.session_bytes.set(sum(p.session_bytes for p in ps + self._departed if p.session is not None))
        m.parked_bytes.set(sum(p.parked_bytes for p in ps if p.parked))

    # -- the worker thread ----------------------------------------------------------------------------------
    def _work(self, jobs: list, saving: list, closing: list):
        """Worker thread: close and keep the sessions of players who left; then per job restore a world taken
        back, park, reset, or show; then one step_many for every action; encode. Returns (one (data, frame index,
        error) per job, one World or None per player in `saving`)."""
        _close_sessions_of(closing)
        saved = self._save_all(saving)
        freed = bool(closing or saving)
        results: list = [None] * len(jobs)
        steps = []
        for i, (p, kind, arg, _) in enumerate(jobs):
            try:
                if kind == "reset":
                    p.resume_world = None  # a fresh start: a world taken back is not restored
                    self._reset(p, arg)
                    f = p.last_frame
                    data = encode_frame(f, p.fmt, self.cfg.jpeg_quality) if f is not None else None
                    results[i] = (data, p.session.frame_index, None)
                    continue
                if p.resume_world is not None:
                    self._restore(p)
                if kind == "park":
                    results[i] = (self._snapshot_and_close(p), p.frame_index, None)
                    freed = True
                elif kind == "show":
                    f = p.last_frame
                    data = encode_frame(f, p.fmt, self.cfg.jpeg_quality) if f is not None else None
                    results[i] = (data, p.session.frame_index, None)
                elif p.session is None:
                    results[i] = (None, 0, RuntimeError("no session"))
                else:
                    steps.append(i)
            except Exception as e:  # noqa: BLE001 - reported to this player only
                log.exception("%s failed", kind)
                results[i] = (None, 0, e)
        if steps:
            sessions = [jobs[i][0].session for i in steps]
            try:
                frames = step_many(sessions, [jobs[i][2] for i in steps])
            except Exception:  # noqa: BLE001 - a batch failed: find out whose session it was
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
                    p.last_frame = stacked(f)  # its own copy: a view would keep the whole batch alive
                    results[i] = (encode_frame(p.last_frame, p.fmt, self.cfg.jpeg_quality), p.session.frame_index,
                                  None)
        if freed:
            _trim_malloc()
        return results, saved

    def _snapshot_and_close(self, p: Player) -> World:
        """Worker thread: the player's world as a World; its session closed (its memory freed)."""
        t0 = time.perf_counter()
        world = World(p.session.snapshot(), p.last_frame, p.seed)
        s, p.session, p.session_bytes = p.session, None, 0
        s.close()
        self.metrics.park_seconds.observe(time.perf_counter() - t0)
        return world

    def _save_all(self, players: list) -> list:
        """Worker thread: _snapshot_and_close each (None for one that fails: its session is closed)."""
        out = []
        for p in players:
            try:
                out.append(self._snapshot_and_close(p))
            except Exception:  # noqa: BLE001 - its world is lost, the others are not
                log.exception("keeping the world of a player who left failed")
                _close_sessions_of([p])
                out.append(None)
        return out

    def _restore(self, p: Player) -> None:
        """Worker thread: the player's session again, from the world taken back from the store."""
        t0 = time.perf_counter()
        world, p.resume_world = p.resume_world, None
        self.open_model()
        if p.session is not None:
            p.session.close()
            p.session = None
        p.session = self._model.session(snapshot=world.snapshot)
        p.session_seed = p.session.seed
        p.session_bytes = p.session.memory_bytes()
        p.last_frame = world.frame
        self.metrics.resume_seconds.observe(time.perf_counter() - t0)
        self.metrics.resumes.labels("reconnect" if p.resumed and p.frame_index == 0 else "input").inc()

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
                p.session = None
            p.session = self._model.session(seed=seed)
            p.session_seed = seed
            p.session_bytes = p.session.memory_bytes()
        frames = self.world.context(seed, self.model_cfg)
        p.session.reset(frames=frames if len(frames) else None)
        n = self.model_cfg.frames_per_step
        p.last_frame = stacked(frames[-n:]) if len(frames) >= n else None  # the last context step's frames
        return frames


def _reason(why: str | None) -> str:
    """A metric label for a GONE_* reason."""
    from . import worlds

    return {worlds.GONE_DROPPED: "dropped", worlds.GONE_EXPIRED: "expired", worlds.GONE_TAKEN: "taken",
            worlds.GONE_TOO_BIG: "dropped"}.get(why, "unknown")


_libc_trim = None


def _trim_malloc() -> None:
    """Give the heap's free pages back to the system after sessions closed (glibc `malloc_trim`): without it the
    freed KV caches stay in the process's resident memory, reused by the next session but not returned. A no-op
    where the C library has no malloc_trim."""
    global _libc_trim
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc_trim = False
    if _libc_trim:
        _libc_trim(0)


@contextlib.contextmanager
def _logged(what: str):
    """Best effort: a failure (a world store that does not answer) is logged, and the caller goes on."""
    try:
        yield
    except Exception:  # noqa: BLE001
        log.exception("%s failed", what)


def _close_all(sessions) -> None:
    for s in sessions:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.exception("closing a session failed")


def _close_sessions_of(players) -> None:
    _close_all([p.session for p in players if p.session is not None])
    for p in players:
        p.session, p.session_bytes = None, 0


def _has_step_batch() -> bool:
    import nfd_rt

    return hasattr(nfd_rt, "step_batch")


def _json(obj) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))
