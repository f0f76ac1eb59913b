"""`nfd-rt serve --ray`: the same app as a Ray Serve deployment with N replicas (one per GPU in production).

Each replica is a full `nfd-rt serve` process of its own: its players, its sessions, its tick loop (one batched
step per tick over its players). A player is one WebSocket, and Ray Serve's proxy keeps a WebSocket on the
replica that accepted it for as long as it is open, so a player stays pinned to one replica for the life of its
session (sessions are stateful: the KV cache lives there). New players go to the less loaded replica (Serve's
router compares ongoing requests, and an open WebSocket is one). When a replica dies, its players' WebSockets
are closed by the proxy.

Worlds move between replicas through one store of the application, `WorldStoreDeployment` (a second deployment,
one replica, no CPU reserved), holding the `worlds.WorldStore` every replica uses through `RayWorlds`: a replica
puts a player's world there when the player parks (--park-after) or disconnects, and any replica that receives a
connection with that player's `?resume=TOKEN` takes it and restores the session. So a player whose replica died
while it was parked or after it left continues its world on another replica; a player active when its replica
dies loses its world (its session was only in that replica's memory, and a world leaves the store when it is
resumed) and starts anew.

    python -m nfd_rt.serve.ray [MODEL.nfd] --replicas 2 [--port 8000] [--ray-address auto]

Multi-node: docs/serve.md ("Scale-out on Ray Serve").
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

from ray import serve

from .server import ServeConfig
from .worlds import WorldStore

APP_NAME = "nfd_rt"
# A parked world whose replica stops renewing it (every Server.TOUCH_EVERY_S) is kept this long, then
# --resume-within more: time for its player to reconnect to another replica after its replica died.
LEASE_S = 60.0
# A take of a world not in the store waits this long for it: the replica its player just left may still be
# saving it (the next tick, after any step in progress) when the reconnect reaches another replica.
RESUME_GRACE_S = 5.0
# Ray Serve's hook for middlewares in its HTTP proxies (read by every proxy process at start).
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "nfd_rt.serve.ray.proxy_middlewares"
# Serve's limits on a proxy's start and health checks (5 s and 10 s by default), raised for a Ray instance started
# here (start()): a proxy importing on a busy machine takes longer, and a proxy killed at start fails serve.start.
PROXY_PATIENCE_ENV = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S")
PROXY_PATIENCE_S = 30


class CloseWhenReplicaLost:
    """Proxy-side ASGI middleware: a WebSocket whose replica died gets a close frame (1012, "service restart")
    instead of a dropped TCP connection, so the player's page can say so and reconnect."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        state = {"accepted": False, "closed": False}

        async def watch_send(msg):
            if msg["type"] == "websocket.accept":
                state["accepted"] = True
            elif msg["type"] == "websocket.close":
                state["closed"] = True
            await send(msg)

        async def watch_receive():
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                state["closed"] = True  # the client left: nothing to tell it
            return msg

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            if state["accepted"] and not state["closed"]:
                from .protocol import CLOSE_REPLICA_LOST

                try:
                    await send({"type": "websocket.close", "code": CLOSE_REPLICA_LOST,
                                "reason": "the replica holding this session is gone: reconnect (?resume=TOKEN "
                                          "continues a world parked or left before)"})
                except Exception:  # noqa: BLE001 - the client may be gone too
                    pass


def proxy_middlewares():
    """Called by each Ray Serve HTTP proxy when RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names it."""
    from starlette.middleware import Middleware

    return [Middleware(CloseWhenReplicaLost)]


def _replica_name() -> str:
    """This replica's id as Ray names it (the suffix of its actor name), shown in /healthz and hello messages."""
    ctx = serve.get_replica_context()
    rid = ctx.replica_id
    return getattr(rid, "unique_id", None) or str(rid)


@serve.deployment(name="NFDWorlds", num_replicas=1, max_ongoing_requests=4096, health_check_period_s=10)
class WorldStoreDeployment:
    """The application's one store of parked and kept worlds (a single replica: one `WorldStore`, its methods
    run one at a time on the replica's event loop). If it dies, Serve starts a new, empty one: the worlds in it
    are lost, their players are told when they come back (4507, or a new world on a reconnect)."""

    def __init__(self, max_bytes: int | None, keep_s: float, lease_s: float, grace_s: float = RESUME_GRACE_S):
        self.store = WorldStore(max_bytes, keep_s, lease_s)  # "auto": a quarter of this node's memory
        self.grace_s = grace_s
        self._waiting: dict = {}  # token -> asyncio.Event set by its next put

    async def put(self, token, world, connected: bool) -> list:
        dropped = self.store.put(token, world, connected)
        ev = self._waiting.pop(token, None)
        if ev is not None:
            ev.set()
        return dropped

    async def take(self, token, wait: bool = False):
        """wait: a reconnect's take, which waits up to grace_s for a world not here yet (a parked player's own
        world is here unless it is gone for good: no wait)."""
        world, why = self.store.take(token)
        if world is None and wait and self.grace_s > 0:  # perhaps on its way: wait for a put of it, a little
            ev = self._waiting.setdefault(token, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), self.grace_s)
            except asyncio.TimeoutError:
                if self._waiting.get(token) is ev:
                    del self._waiting[token]
            world, why = self.store.take(token)
        return world, why

    async def release(self, token) -> None:
        self.store.release(token)

    async def touch(self, tokens) -> None:
        self.store.touch(tokens)

    async def stats(self) -> dict:
        return self.store.stats()


class RayWorlds:
    """The interface `Server` uses (as `worlds.LocalWorlds`), over the store deployment's handle."""

    durable = True  # outlives a replica: a replica that stops keeps its players' worlds there
    max_bytes = None  # known to the store's replica (checked by `build` when given)

    TIMEOUT_S = 60.0  # a store that does not answer fails the call (the server then reports the world lost)

    def __init__(self, handle):
        self.handle = handle

    async def _call(self, method: str, *args):
        return await asyncio.wait_for(getattr(self.handle, method).remote(*args), self.TIMEOUT_S)

    async def put(self, token, world, connected: bool) -> list:
        return await self._call("put", token, world, connected)

    async def take(self, token, wait: bool = False):
        return await self._call("take", token, wait)

    async def release(self, token) -> None:
        await self._call("release", token)

    async def touch(self, tokens) -> None:
        await self._call("touch", list(tokens))

    async def stats(self) -> dict:
        return await self._call("stats")


@serve.deployment(name="NFDServe", health_check_period_s=5, health_check_timeout_s=20,
                  graceful_shutdown_timeout_s=5)
@serve.ingress()
class NFDServe:
    """One replica: builds the FastAPI app of `nfd_rt.serve.app` in the replica process (nothing is pickled
    but the config and the store's handle)."""

    def __init__(self, cfg: dict, worlds=None):
        self._cfg = ServeConfig(**cfg)
        self._cfg.check()
        self._worlds = worlds  # a DeploymentHandle of WorldStoreDeployment

    def __serve_build_asgi_app__(self):
        from .app import create_app

        handle = self._worlds
        return create_app(self._cfg, replica_name=_replica_name,
                          worlds=(lambda: RayWorlds(handle)) if handle is not None else None)


def build(cfg: ServeConfig, replicas: int = 1, cpus_per_replica: float | None = None,
          gpus_per_replica: float | None = None):
    """The Ray Serve application (pass it to `serve.run`)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    cfg.check()
    cfg.model = cfg.resolved_model()  # an absolute path: replicas may run in another working directory
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if cfg.device == "cuda" else 0.0
    if cpus_per_replica is None:
        cpus_per_replica = 0.0 if gpus_per_replica else 1.0
    options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    if cfg.max_parked_bytes is not None and (cfg.park_after > 0 or cfg.resume_within > 0):
        from .server import check_files
        from .worlds import human, world_bytes

        path, model_cfg, _ = check_files(cfg)
        # "auto" is resolved on each replica's machine (bf16 on a CPU with AVX512-BF16 or AMX): refuse only a cap
        # below the smallest world it can be (a 16-bit state is the same size on either device). Where this
        # machine cannot size a 16-bit session (a CPU without bf16, a build without CUDA), each replica checks.
        try:
            one = world_bytes(path, model_cfg, "cuda" if gpus_per_replica else "cpu",
                              "float32" if cfg.dtype == "float32" else "bfloat16")
        except (RuntimeError, ValueError):
            one = 0
        if cfg.max_parked_bytes < one:
            raise ValueError(f"--max-parked-bytes {cfg.max_parked_bytes} cannot hold one world of model "
                             f"{model_cfg.name} (up to {one} bytes, {human(one)}, at a full cache); raise it, or "
                             "turn parking and keeping off with --park-after 0 --resume-within 0")
    store = WorldStoreDeployment.options(ray_actor_options={"num_cpus": 0}).bind(
        cfg.max_parked_bytes, cfg.resume_within, LEASE_S)
    # An open WebSocket counts as one ongoing request for its whole life: allow every player of the replica
    # plus page and health requests; the app itself refuses players past max_players with a close code.
    return NFDServe.options(num_replicas=replicas, ray_actor_options=options,
                            max_ongoing_requests=cfg.max_players + 16).bind(dataclasses.asdict(cfg), store)


def start(cfg: ServeConfig, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000,
          address: str | None = None, cpus_per_replica: float | None = None, gpus_per_replica: float | None = None,
          num_cpus: int | None = None):
    """Connect to (or start) Ray, start Serve's HTTP proxy on host:port and deploy. Returns when all replicas
    are up."""
    import os

    import ray

    if not ray.is_initialized():
        # A Ray instance started here passes the environment on to Serve's proxy: it closes the WebSockets of a
        # lost replica cleanly. On a cluster started with `ray start`, export the variable there (docs/serve.md).
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        # Serve's controller kills a proxy that is not ready within 5 s (or fails a 10 s health check three times),
        # and serve.start then fails (seen in CI on a loaded machine): PROXY_PATIENCE_S for both; the user's own
        # settings win.
        for name in PROXY_PATIENCE_ENV:
            os.environ.setdefault(name, str(PROXY_PATIENCE_S))
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build(cfg, replicas, cpus_per_replica, gpus_per_replica), name=APP_NAME, route_prefix="/")


def run(cfg: ServeConfig, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
        cpus_per_replica: float | None = None, gpus_per_replica: float | None = None) -> int:
    """`nfd-rt serve --ray`: deploy, then serve until Ctrl-C (which deletes the application)."""
    start(cfg, replicas, host, port, address, cpus_per_replica, gpus_per_replica)
    print(f"nfd-rt serve --ray: http://{host}:{port}/ on Ray Serve, {replicas} replica(s) of {cfg.model}, "
          f"{cfg.max_players} players each", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from . import cli

    p = argparse.ArgumentParser(prog="python -m nfd_rt.serve.ray", description=__doc__.split("\n")[0])
    cli.add_arguments(p)
    args = p.parse_args(argv)
    args.ray = True
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
