"""The ASGI app of `nfd-rt serve` (FastAPI): the play page, /healthz, /metrics and the players' WebSocket.

`create_app(cfg)` builds the app without touching the model; the `Server` (players, sessions, tick loop) is
created on first use inside the serving process. That keeps the app picklable, which Ray Serve needs to ship
it to its replicas (`nfd_rt.serve.ray`), and lets each replica own its players.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from typing import Callable

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, Response

from . import protocol
from .server import Player, ServeConfig, Server, ServerFull
from .worlds import TOKEN_RE

log = logging.getLogger("nfd_rt.serve")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class _Holder:
    """The process's Server, made on first use (never pickled: Ray ships the app before any exists)."""

    def __init__(self, cfg: ServeConfig, replica_name: Callable[[], str] | None, server: Server | None = None,
                 worlds: Callable[[], object] | None = None):
        self.cfg, self.replica_name, self.server, self.worlds = cfg, replica_name, server, worlds

    def get(self) -> Server:
        if self.server is None:
            self.server = Server(self.cfg, self.replica_name() if self.replica_name else None,
                                 worlds=self.worlds() if self.worlds else None)
        return self.server

    def __getstate__(self):
        return {"cfg": self.cfg, "replica_name": self.replica_name, "server": None, "worlds": self.worlds}


def _static(name: str) -> bytes:
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


def create_app(cfg: ServeConfig, replica_name: Callable[[], str] | None = None, server: Server | None = None,
               worlds: Callable[[], object] | None = None):
    """The FastAPI app serving `cfg.model`. `replica_name` labels this process in /healthz and hello messages.
    `server`: a Server made (and checked) already, e.g. by `nfd-rt serve` before it listens; not for Ray.
    `worlds`: makes the store of parked and kept worlds (default: one in this process); Ray Serve passes one
    shared by its replicas."""
    cfg.check()
    holder = _Holder(cfg, replica_name, server, worlds)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        holder.get()  # load and validate the model before the first player, where a lifespan runs
        try:
            yield
        finally:
            if holder.server is not None:
                await holder.server.stop()
                holder.server = None

    app = FastAPI(title="nfd_rt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/")
    async def page():
        return Response(_static("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/play.js")
    async def script():
        return Response(_static("play.js"), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz():
        srv = holder.get()
        return JSONResponse({**srv.health(), "worlds": await srv.store_stats()})

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        srv = holder.get()
        await srv.store_stats()  # the nfd_serve_stored_* gauges
        return Response(srv.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws")
    async def play(ws: WebSocket):
        await _play(holder.get(), ws)

    return app


async def _close(srv: Server, ws, code: int, reason: str) -> None:
    srv.metrics.closes.labels(str(code)).inc()
    with contextlib.suppress(Exception):  # the client may already be gone
        await asyncio.wait_for(ws.close(code, reason.encode()[:120].decode(errors="ignore")), 2.0)


async def _play(srv: Server, ws) -> None:
    """One player's connection: admit, say hello, then run a receiver and a sender until either ends."""
    q = ws.query_params
    await ws.accept()
    if srv.cfg.token is not None and not hmac.compare_digest(q.get("token", "").encode(), srv.cfg.token.encode()):
        srv.metrics.connections.labels("unauthorized").inc()
        await _close(srv, ws, protocol.CLOSE_UNAUTHORIZED, "unauthorized: missing or wrong ?token=")
        return
    fmt = q.get("format", "jpeg").lower()
    seed = q.get("seed", str(srv.cfg.default_seed))
    resume = q.get("resume")
    if fmt not in ("jpeg", "png") or not seed.isdigit() or int(seed) > protocol.MAX_SEED:
        srv.metrics.connections.labels("bad_request").inc()
        await _close(srv, ws, protocol.CLOSE_BAD_REQUEST,
                     f"bad query: format must be jpeg or png, seed an integer in [0, {protocol.MAX_SEED}]")
        return
    if resume is not None and not TOKEN_RE.match(resume):
        srv.metrics.connections.labels("bad_request").inc()
        await _close(srv, ws, protocol.CLOSE_BAD_REQUEST, "bad query: resume must be the token of a hello message")
        return
    try:
        player, resume_error = await srv.admit(fmt, int(seed), resume)
    except ServerFull as e:
        srv.metrics.connections.labels("full").inc()
        await _close(srv, ws, protocol.CLOSE_FULL, str(e))
        return
    srv.metrics.connections.labels("accepted").inc()
    try:
        hello = srv.hello(player)
        if resume_error is not None:
            hello["resume_error"] = resume_error
        await ws.send_text(json.dumps(hello))
        tasks = {asyncio.ensure_future(_receive(srv, ws, player)), asyncio.ensure_future(_send(srv, ws, player))}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:  # a send to a vanished client ends with an error: expected, only logged
            if not t.cancelled() and t.exception() is not None:
                log.debug("connection %s: %r", player.id, t.exception())
        srv.leave(player)  # first: a sender that misses its cancellation still ends at its next wake-up
        player.wake.set()
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    except Exception:  # noqa: BLE001 - a broken connection ends this player, never the server
        log.debug("connection %s ended with an error", player.id, exc_info=True)
    finally:
        srv.leave(player)


async def _receive(srv: Server, ws, p: Player) -> None:
    while True:
        m = await ws.receive()
        if m["type"] == "websocket.disconnect":
            return
        srv.on_message(p, m.get("text") if m.get("text") is not None else m.get("bytes"))


async def _woken(p: Player, timeout: float) -> None:
    """Until `p.wake` is set or `timeout` seconds pass. Not `asyncio.wait_for(p.wake.wait(), ...)`: before Python
    3.12 that swallows a cancellation arriving just as the event is set, and the sender then outlived its
    connection by up to a stats interval (a test with a long one hung)."""
    if p.wake.is_set():
        return
    waiter = asyncio.ensure_future(p.wake.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


async def _send(srv: Server, ws, p: Player) -> None:
    """The only task that writes to this socket after the hello: texts, then the newest frame, then stats."""
    timeout = srv.cfg.send_timeout
    interval = srv.cfg.stats_interval
    next_stats = time.monotonic() + interval
    while not p.gone:
        await _woken(p, max(0.0, next_stats - time.monotonic()))
        p.wake.clear()
        if p.close_request is not None:
            await _close(srv, ws, *p.close_request)
            return
        try:
            while p.texts:
                await asyncio.wait_for(ws.send_text(p.texts.popleft()), timeout)
            if p.outbox is not None:
                data, p.outbox = p.outbox, None
                await asyncio.wait_for(ws.send_bytes(data), timeout)
                p.frames_sent += 1
                srv.metrics.frames.inc()
            if time.monotonic() >= next_stats:
                await asyncio.wait_for(ws.send_text(json.dumps(srv.stats(p))), timeout)
                next_stats = time.monotonic() + interval
        except asyncio.TimeoutError:
            await _close(srv, ws, protocol.CLOSE_SLOW_CLIENT, f"client did not read for {timeout:g} s")
            return
