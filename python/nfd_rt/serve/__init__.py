"""`nfd-rt serve`: players in a browser over WebSocket, one batched step per tick, scaled out on Ray Serve.

    pip install "nfd_rt[serve]"      # FastAPI + uvicorn + Pillow + prometheus-client
    nfd-rt serve [MODEL.nfd] [--port 8000] [--fps 20] [--max-players 32] [--token SECRET]
    nfd-rt serve --ray --replicas 2  # needs "nfd_rt[ray]"

`create_app(ServeConfig(...))` is the ASGI app for any ASGI server; docs/serve.md is the public contract.
"""

from .server import ServeConfig, step_many

__all__ = ["ServeConfig", "create_app", "step_many"]


def create_app(cfg: ServeConfig, replica_name=None):
    from .app import create_app as make

    return make(cfg, replica_name)
