"""`nfd-rt serve --ray`: the same app as a Ray Serve deployment with N replicas (one per GPU in production).

Each replica is a full `nfd-rt serve` process of its own: its players, its sessions, its tick loop (one batched
step per tick over its players). A player is one WebSocket, and Ray Serve's proxy keeps a WebSocket on the
replica that accepted it for as long as it is open, so a player stays pinned to one replica for the life of its
session (sessions are stateful: the KV cache lives there). New players go to the less loaded replica (Serve's
router compares ongoing requests, and an open WebSocket is one). When a replica dies, its players' WebSockets
are closed by the proxy; a player that reconnects gets a fresh session on a live replica.

    python -m nfd_rt.serve.ray [MODEL.nfd] --replicas 2 [--port 8000] [--ray-address auto]

Multi-node: docs/serve.md ("Scale-out on Ray Serve").
"""

from __future__ import annotations

import dataclasses
import sys
import time

from ray import serve

from .server import ServeConfig

APP_NAME = "nfd_rt"
# Ray Serve's hook for middlewares in its HTTP proxies (read by every proxy process at start).
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "nfd_rt.serve.ray.proxy_middlewares"


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
                                "reason": "the replica holding this session is gone: reconnect for a new one"})
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


@serve.deployment(name="NFDServe", health_check_period_s=5, health_check_timeout_s=20,
                  graceful_shutdown_timeout_s=5)
@serve.ingress()
class NFDServe:
    """One replica: builds the FastAPI app of `nfd_rt.serve.app` in the replica process (nothing is pickled
    but the config)."""

    def __init__(self, cfg: dict):
        self._cfg = ServeConfig(**cfg)
        self._cfg.check()

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self._cfg, replica_name=_replica_name)


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
    # An open WebSocket counts as one ongoing request for its whole life: allow every player of the replica
    # plus page and health requests; the app itself refuses players past max_players with a close code.
    return NFDServe.options(num_replicas=replicas, ray_actor_options=options,
                            max_ongoing_requests=cfg.max_players + 16).bind(dataclasses.asdict(cfg))


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
