"""The `nfd-rt serve` subcommand: options and the uvicorn (or Ray Serve) launch."""

from __future__ import annotations

import argparse
import sys


def add_arguments(q: argparse.ArgumentParser) -> None:
    from .._cli_args import int_in as _int_in  # bad numbers are usage errors, as everywhere
    from .._cli_args import positive_float as _positive_float
    from .._cli_args import positive_int as _positive_int

    q.add_argument("model", nargs="?", default="", help="a .nfd file or a shipped model: gridworld (default), "
                   "gridworld-2step, gridworld-1step")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    q.add_argument("--port", type=_int_in(1, 65535), default=8000, help="TCP port to listen on")
    q.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    q.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (bf16 on cuda, and on a CPU "
                   "with AVX512-BF16 or AMX)")
    q.add_argument("--threads", type=_int_in(0, 1024), default=0, help="CPU threads per session (0 = physical cores)")
    q.add_argument("--fps", type=_positive_float, default=20.0,
                   help="ticks per second: the most frames a player gets a second")
    q.add_argument("--max-players", type=_positive_int, default=32, help="players per process (per replica with --ray)")
    q.add_argument("--token", default=None, help="players must connect with ?token=SECRET")
    q.add_argument("--idle-timeout", type=_positive_float, default=60.0, help="close a player silent this many seconds")
    q.add_argument("--park-after", type=_seconds, default=30.0,
                   help="park a player without input this many seconds: its session is snapshotted and freed, and "
                   "restored at its next input (0: never)")
    q.add_argument("--max-parked-bytes", type=_size, default=None, metavar="SIZE",
                   help="memory for parked and kept worlds, e.g. 4G (default auto: a quarter of the memory); over "
                   "it the oldest are dropped")
    q.add_argument("--resume-within", type=_seconds, default=300.0,
                   help="keep a disconnected player's world this many seconds for a reconnect with ?resume= "
                   "(0: drop it at once)")
    q.add_argument("--world", default="auto", choices=("auto", "gridworld", "blank"),
                   help="what a reset starts from (auto: gridworld for the shipped model, else no context frame)")
    q.add_argument("--keymap", default=None, help="JSON file {key name: action dimension} for keyboard players, "
                   "optionally with \"pointer\": {\"dx\": dim, \"dy\": dim, \"scroll\": dim, \"scale\": x} for the "
                   "mouse (default: the model's own, Waypoint's key codes and mouse; none for other models)")
    q.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug", "trace"),
                   help="uvicorn's log level")
    q.add_argument("--ray", action="store_true", help="serve on Ray Serve (pip install 'nfd_rt[ray]')")
    q.add_argument("--replicas", type=_positive_int, default=1, help="Ray Serve replicas (one per GPU in production)")
    q.add_argument("--ray-address", default=None, help="an existing Ray cluster ('auto'); default: start one")
    q.add_argument("--cpus-per-replica", type=float, default=None, help="Ray CPUs reserved per replica")
    q.add_argument("--gpus-per-replica", type=float, default=None,
                   help="Ray GPUs per replica (default 1 with --device cuda, else 0)")


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0 (0: off)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: off), got {text}")
    return v


def _size(text: str) -> int | None:
    """argparse type: "auto" (None) or bytes, with an optional binary suffix: 4G, 512M, 1048576."""
    from .worlds import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_args(args: argparse.Namespace):
    from .server import ServeConfig

    cfg = ServeConfig(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads, fps=args.fps,
                      max_players=args.max_players, token=args.token, idle_timeout=args.idle_timeout,
                      park_after=args.park_after, max_parked_bytes=args.max_parked_bytes,
                      resume_within=args.resume_within, world=args.world, keymap=args.keymap)
    cfg.check()
    return cfg


def _missing(extra: str, e: ImportError) -> ImportError:
    return ImportError(f"nfd-rt serve needs the {extra!r} extra ({e.name or e} is missing): "
                       f"pip install 'nfd_rt[{extra}]'")


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, when the address cannot be listened on (in use, not an address of this machine),
    rather than in uvicorn's log after the model has loaded. Bound the way uvicorn binds it (SO_REUSEADDR)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"--host {host}: not an address or a known host name ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def run(args: argparse.Namespace) -> int:
    """Checks everything (options, model file, key map, device and dtype, the address) before listening: a bad
    option is one line and a non-zero exit, never a server that starts and then fails every player."""
    cfg = config_from_args(args)
    if args.ray:
        try:
            from . import ray as ray_serve
        except ImportError as e:
            raise _missing("ray", e) from None
        from .server import check_files

        check_files(cfg)  # the device is checked by each replica: the GPUs may be on other machines
        return ray_serve.run(cfg, replicas=args.replicas, host=args.host, port=args.port, address=args.ray_address,
                             cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
    try:
        import uvicorn

        from .app import create_app
        from .server import Server
    except ImportError as e:
        raise _missing("serve", e) from None
    server = Server(cfg)  # the model file and the key map
    server.open_model()  # the device and dtype: loads the weights the players will share
    _check_port(args.host, args.port)
    app = create_app(cfg, server=server)
    print(f"nfd-rt serve: http://{args.host}:{args.port}/  (model {cfg.resolved_model()}, {cfg.fps:g} FPS, "
          f"up to {cfg.max_players} players{', token required' if cfg.token else ''}, "
          f"{f'parking players idle {cfg.park_after:g} s' if cfg.park_after else 'no parking'})",
          file=sys.stderr, flush=True)
    # ws_max_size: client messages are small JSON; a 64 KiB frame limit stops a memory-filling message early.
    # No per-message deflate: frames are JPEG/PNG already, compressing them again only costs CPU.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_max_size=65536,
                ws_per_message_deflate=False,
                ws_ping_interval=20.0, ws_ping_timeout=20.0, timeout_graceful_shutdown=5)
    return 0
