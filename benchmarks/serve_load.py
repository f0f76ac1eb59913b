#!/usr/bin/env python3
"""Load and fault test of `nfd-rt serve` on loopback: scripted players, misbehaving clients, server memory.

    python benchmarks/serve_load.py                          # 1, 16 and 32 players, 60 s each, faults at 32
    python benchmarks/serve_load.py --players 1,4 --seconds 5 --out /tmp/r.json     (a quick look)

Starts `nfd-rt serve` itself on a free loopback port (or uses --url), then runs one phase per entry of
--players. A scripted player is a closed loop, like the play page: it sends the keys it holds ({"type":
"keys"}, a random key held 1-8 frames), waits for the frame, records the time from sending to receiving
(action-to-frame latency), and answers at once; the server's tick (--fps) paces it. In the largest phase,
misbehaving clients run beside the players:
  - disconnect mid-frame: connect, send an action, drop the TCP connection while its frame is being made;
  - garbage: invalid JSON, binary, wrong types, unknown keys, NaN, deep nesting, oversize messages, until the
    server closes it (4400 after 10 malformed messages in a row, 1009 for an oversize frame); then again;
  - never reading: a raw socket with a small receive buffer that sends actions and never reads a byte.
The server's resident memory is sampled every second (/proc) and its /metrics are read at the end.
Writes JSON under benchmarks/results/ (never over an existing file) and prints a Markdown table
(`--markdown-from RESULT.json` prints it again from a stored result).

    python benchmarks/serve_load.py --parking                # 64 players, 8 active, parking on, then off

The parking scenario (docs/serve.md, "Parking idle players"): all players play a few frames, then most go idle
(connected, a ping every 10 s, no input) while the active ones play on. With `--park-after` the idle ones are
parked; the server's memory (resident, and its session and parked bytes) and the active players' frames/s are
measured for --seconds; then every idle player comes back with one action, and its world must go on where it
was (the session's frame index one past the last it had, the agent within one step of where it stood). The same
with parking off (`--park-after 0`) for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import result_header  # noqa: E402  (benchmarks/common.py)
KEYS = (None, "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight")


# -- the server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """`nfd-rt serve` as installed beside this Python (the console script), else through the module."""
    exe = Path(sys.executable).with_name("nfd-rt")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nfd_rt.cli"]


class ServerProcess:
    """`nfd-rt serve ARGS --port P` in a subprocess; ready once /healthz answers. Stops it on exit."""

    def __init__(self, *args: str, port: int | None = None, log_path: str | None = None, ready_timeout=90.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.args, self.log_path, self.ready_timeout = list(args), log_path, ready_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(serve_command() + ["serve", "--port", str(self.port), "--log-level", "warning",
                                                        *self.args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nfd-rt serve exited with {self.proc.returncode} before it was ready"
                                   + (f" (log: {self.log_path})" if self.log_path else ""))
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise TimeoutError(f"nfd-rt serve did not answer /healthz within {self.ready_timeout:g} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read()

    def health(self) -> dict:
        return json.loads(self.get("/healthz"))

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics").decode())

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return kb / 1024


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} for the samples (comments dropped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- well-behaved players ---------------------------------------------------------------------------------------
async def player(url: str, seconds: float, seed: int, warmup: float = 1.0) -> dict:
    """One scripted player; latencies and frames counted after `warmup` seconds. Never raises."""
    from websockets.asyncio.client import connect

    rng = random.Random(seed)
    lat, frames, hold, key = [], 0, 0, None
    result = {"seed": seed, "error": None, "close": None}
    try:
        async with connect(f"{url}?seed={seed}", compression=None, max_size=2**20) as ws:
            hello = json.loads(await ws.recv())
            result["replica"] = hello["replica"]
            while not isinstance(await ws.recv(), bytes):  # the room's starting frame
                pass
            t_start = time.perf_counter()
            t_count = t_start + warmup
            t_end = t_start + warmup + seconds
            while True:
                if hold == 0:
                    key, hold = rng.choice(KEYS), rng.randint(1, 8)
                hold -= 1
                sent = time.perf_counter()
                if sent >= t_end:
                    break
                await ws.send(json.dumps({"type": "keys", "keys": [key] if key else []}))
                while True:  # stats messages may come between frames
                    m = await ws.recv()
                    if isinstance(m, bytes):
                        break
                    if json.loads(m).get("type") == "error":
                        raise RuntimeError(f"server said: {m}")
                now = time.perf_counter()
                if sent >= t_count:
                    frames += 1
                    lat.append(now - sent)
    except Exception as e:  # noqa: BLE001 - recorded; the phase fails on any player error
        result["error"] = repr(e)
        result["close"] = getattr(getattr(e, "rcvd", None), "code", None)
    result.update(frames=frames, seconds=seconds, latencies=lat)
    return result


# -- misbehaving clients ----------------------------------------------------------------------------------------
async def disconnect_mid_frame(url: str, stop: asyncio.Event, counts: dict) -> None:
    from websockets.asyncio.client import connect

    while not stop.is_set():
        try:
            ws = await connect(url, compression=None)
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "keys", "keys": ["ArrowRight"]}))
            await asyncio.sleep(random.uniform(0.0, 0.06))  # somewhere inside the tick making its frame
            ws.transport.abort()  # no close handshake: the TCP connection just goes
            counts["disconnects"] += 1
        except Exception as e:  # noqa: BLE001
            counts.setdefault("disconnect_errors", []).append(repr(e))
        await asyncio.sleep(0.25)


GARBAGE = [
    "not json", "[1, 2, 3]", '{"no": "type"}', '{"type": "fly"}', '{"type": "action", "action": "left"}',
    '{"type": "action", "action": [1, 2]}', '{"type": "action", "action": [NaN, 0, 0, 0, 0, 0, 0, 0]}',
    '{"type": "action", "action": [1e999, 0, 0, 0, 0, 0, 0, 0]}', '{"type": "keys", "keys": ["F13"]}',
    '{"type": "keys", "keys": "ArrowUp"}', '{"type": "reset", "seed": -1}', '{"type": "reset", "seed": "x"}',
    "[" * 2000 + "]" * 2000, "x" * 5000, b"\x00\xff binary",
]


async def garbage(url: str, stop: asyncio.Event, counts: dict) -> None:
    """Sends garbage until closed; checks that every malformed message got an error reply first."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    while not stop.is_set():
        try:
            async with connect(url, compression=None) as ws:
                await ws.recv()  # hello
                i = 0
                while True:
                    await ws.send(GARBAGE[i % len(GARBAGE)])
                    i += 1
                    while True:
                        m = await ws.recv()
                        if isinstance(m, str) and json.loads(m)["type"] == "error":
                            counts["error_replies"] += 1
                            break
                    if i % 4 == 0:  # a valid message in between keeps the connection usable...
                        await ws.send(json.dumps({"type": "keys", "keys": []}))
                        while not isinstance(await ws.recv(), bytes):
                            pass
                        counts["frames_between_garbage"] += 1
                    if i >= 24:  # ...then 10 in a row get it closed
                        for _ in range(12):
                            await ws.send("garbage")
                        while True:  # error replies, then the close (raises ConnectionClosed)
                            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            counts["closes"][str(code)] = counts["closes"].get(str(code), 0) + 1
        except Exception as e:  # noqa: BLE001
            counts.setdefault("garbage_errors", []).append(repr(e))
        else:
            counts["closes"]["none"] = counts["closes"].get("none", 0) + 1
        # One oversize frame (over the server's 64 KiB limit) per round: closed by uvicorn with 1009.
        try:
            async with connect(url, compression=None, max_size=2**20) as ws:
                await ws.recv()
                await ws.send("y" * 100_000)
                await asyncio.wait_for(ws.recv(), 10)
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            counts["closes"][str(code)] = counts["closes"].get(str(code), 0) + 1
        except Exception as e:  # noqa: BLE001
            counts.setdefault("garbage_errors", []).append(repr(e))
        await asyncio.sleep(0.5)


def _ws_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455), for the raw-socket client."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def never_reading(url: str, stop: asyncio.Event, counts: dict) -> None:
    """Handshake on a raw socket with a 4 KiB receive buffer, then send actions at 20/s and never read."""
    host, port = re.match(r"ws://([^:/]+):(\d+)", url).groups()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    status = await reader.readline()
    counts["never_reading_handshake"] = status.decode().strip()
    try:
        while not stop.is_set():
            writer.write(_ws_frame(json.dumps({"type": "keys", "keys": ["ArrowDown"]})))
            await asyncio.wait_for(writer.drain(), 5)
            counts["never_reading_actions"] += 1
            await asyncio.sleep(0.05)
    except (OSError, asyncio.TimeoutError) as e:  # the server closed it (send timeout) or stopped reading us
        counts["never_reading_end"] = repr(e)
    finally:
        writer.transport.abort()


# -- phases -----------------------------------------------------------------------------------------------------
def summarize(results: list[dict], seconds: float) -> dict:
    lat = np.concatenate([r["latencies"] for r in results]) * 1e3 if results else np.zeros(0)
    per_player = [r["frames"] / seconds for r in results]
    return {
        "players": len(results),
        "errors": [r["error"] for r in results if r["error"]],
        "frames": int(sum(r["frames"] for r in results)),
        "aggregate_fps": float(sum(per_player)),
        "fps_per_player_mean": float(np.mean(per_player)) if per_player else 0.0,
        "fps_per_player_min": float(np.min(per_player)) if per_player else 0.0,
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "latency_ms_max": float(lat.max()) if lat.size else None,
        "replicas": sorted({r.get("replica") for r in results if r.get("replica")}),
    }


async def run_phase(server: ServerProcess, players: int, seconds: float, faults: bool) -> dict:
    stop = asyncio.Event()
    counts = {"disconnects": 0, "error_replies": 0, "frames_between_garbage": 0, "closes": {},
              "never_reading_actions": 0}
    fault_tasks = []
    if faults:
        fault_tasks = [asyncio.ensure_future(disconnect_mid_frame(server.ws_url, stop, counts)),
                       asyncio.ensure_future(garbage(server.ws_url, stop, counts)),
                       asyncio.ensure_future(never_reading(server.ws_url, stop, counts))]
    rss: list[tuple[float, float]] = []

    async def sample_memory():
        t0 = time.monotonic()
        while not stop.is_set():
            rss.append((round(time.monotonic() - t0, 1), round(server.rss_mib(), 1)))
            await asyncio.sleep(1.0)

    sampler = asyncio.ensure_future(sample_memory())
    results = await asyncio.gather(*(player(server.ws_url, seconds, seed=1000 + i) for i in range(players)))
    stop.set()
    await asyncio.gather(*fault_tasks, sampler, return_exceptions=True)
    out = summarize(results, seconds)
    out["seconds"] = seconds
    out["rss_mib"] = rss
    if faults:
        out["faults"] = counts
    return out


def memory_growth(rss: list, skip: float = 5.0) -> float | None:
    """MiB between the median of the first and the last 5 samples after `skip` seconds of warm-up."""
    vals = [v for t, v in rss if t >= skip]
    if len(vals) < 4:
        return None
    k = min(5, len(vals) // 2)
    return float(np.median(vals[-k:]) - np.median(vals[:k]))


def runtime_alone(threads: int, seconds: float = 3.0) -> dict:
    """Session.step in a loop in this process, no server: what the machine gives the runtime right now."""
    import nfd_rt
    from nfd_rt.demo import MODEL_PATH, game

    with nfd_rt.Session(MODEL_PATH, threads=threads) as s:
        s.reset(frames=game.GridWorld(0).render()[None])
        a = game.action_vector("right")
        for _ in range(3):
            s.step(a)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            s.step(a)
            n += 1
        dt = time.perf_counter() - t0
    return {"fps": n / dt, "ms_per_frame": 1e3 * dt / n, "threads": threads}


def run(players: list[int], seconds: float, fps: float = 20.0, faults: bool = True, threads: int = 0,
        solo_seconds: float | None = None, server_log: str | None = None, extra_args: tuple = (),
        baseline_seconds: float = 3.0) -> dict:
    """Every phase against one server; faults in the largest phase. Returns the result dict."""
    result = {**result_header("serve_load"), "fps": fps, "phases": {},
              "runtime_alone_before": runtime_alone(threads, baseline_seconds)}
    top = max(players)
    with ServerProcess("--fps", str(fps), "--max-players", str(top + 8), "--threads", str(threads),
                       *extra_args, log_path=server_log) as server:
        health = server.health()
        result["server"] = {k: health[k] for k in ("model", "device", "replica", "batched")}
        for n in players:
            secs = solo_seconds if (n == 1 and solo_seconds) else seconds
            phase = asyncio.run(run_phase(server, n, secs, faults and n == top))
            phase["memory_growth_mib"] = memory_growth(phase["rss_mib"])
            result["phases"][str(n)] = phase
            print(f"  {n:3d} players: {phase['aggregate_fps']:.1f} frames/s in all, "
                  f"{phase['fps_per_player_mean']:.1f}/player, p50 {phase['latency_ms_p50']} ms, "
                  f"p99 {phase['latency_ms_p99']} ms, errors {len(phase['errors'])}", flush=True)
        m = server.metrics()
        result["server_metrics"] = {k: v for k, v in m.items() if k.startswith(("nfd_serve_", "process_resident"))
                                    and "_bucket" not in k and "_created" not in k}
        result["server_alive"] = server.proc.poll() is None
    result["environment"]["load_average_end"] = os.getloadavg()
    result["runtime_alone_after"] = runtime_alone(threads, baseline_seconds)
    m = result["server_metrics"]
    if m.get("nfd_serve_batch_size_sum"):  # the runtime's share of a tick, per player stepped
        result["ms_per_session_step_in_server"] = 1e3 * m["nfd_serve_step_seconds_sum"] / m["nfd_serve_batch_size_sum"]
    solo = result["phases"].get("1")
    if solo and solo["aggregate_fps"] > 0:
        for n, ph in result["phases"].items():
            ph["aggregate_vs_one_player"] = ph["aggregate_fps"] / solo["aggregate_fps"]
    return result


def _load_at_start(env: dict) -> float:
    """The load average when the run started (results from before benchmarks/common.py kept a triple)."""
    return env["load_average"] if "load_average" in env else env.get("load_average_start", [0.0])[0]


# -- parking: many connected players, few active ----------------------------------------------------------------
async def parking_player(url: str, seed: int, active: bool, warm_frames: int, ev: dict, out: dict) -> None:
    """One player of the parking scenario; fills `out`. Never raises (errors are recorded)."""
    from websockets.asyncio.client import connect

    from nfd_rt.demo import game

    rng = random.Random(seed)
    out.update(seed=seed, active=active, error=None, frames=[], latencies=[], saw_parked=False)

    async def frame_after(msg: str) -> bytes:
        await ws.send(msg)
        while True:
            m = await ws.recv()
            if isinstance(m, bytes):
                return m
            j = json.loads(m)
            if j.get("type") == "error":
                raise RuntimeError(f"server said: {m}")

    def keys() -> str:
        k = rng.choice(KEYS)
        return json.dumps({"type": "keys", "keys": [k] if k else []})

    try:
        async with connect(f"{url}?seed={seed}", compression=None, max_size=2**20) as ws:
            json.loads(await ws.recv())  # hello
            while not isinstance(await ws.recv(), bytes):  # the room's frame
                pass
            for _ in range(warm_frames):
                last = await frame_after(keys())
            out["index_before"] = 1 + warm_frames
            out["position_before"] = game.agent_position(_decode(last))
            ev["warm"].append(seed)
            if active:
                while not ev["stop"].is_set():
                    sent = time.perf_counter()
                    await frame_after(keys())
                    now = time.perf_counter()
                    out["frames"].append(now)
                    out["latencies"].append(now - sent)
                return
            last_ping = time.monotonic()
            while not ev["come_back"].is_set():  # idle: read what comes, ping now and then, no input
                try:
                    m = await asyncio.wait_for(ws.recv(), 0.5)
                    if isinstance(m, str) and json.loads(m).get("type") == "stats" and json.loads(m).get("parked"):
                        out["saw_parked"] = True
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - last_ping > 10.0:
                    await ws.send(json.dumps({"type": "ping", "t": seed}))
                    last_ping = time.monotonic()
            t0 = time.perf_counter()
            back = await frame_after(json.dumps({"type": "keys", "keys": []}))  # a no-op: the agent stays
            out["first_frame_s"] = time.perf_counter() - t0
            out["position_after"] = game.agent_position(_decode(back))
            while True:  # the session's frame index, from the next stats message
                m = await ws.recv()
                if isinstance(m, str) and json.loads(m).get("type") == "stats":
                    out["index_after"] = json.loads(m)["frame"]
                    break
    except Exception as e:  # noqa: BLE001 - recorded; the scenario reports it
        out["error"] = repr(e)


def _decode(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def parking_phase(server: "ServerProcess", players: int, active: int, seconds: float, parking: bool,
                        warm_frames: int = 12) -> dict:
    ev = {"warm": [], "stop": asyncio.Event(), "come_back": asyncio.Event()}
    outs = [{} for _ in range(players)]
    rss_empty = server.rss_mib()
    tasks = [asyncio.ensure_future(parking_player(server.ws_url, 3000 + i, i < active, warm_frames, ev, outs[i]))
             for i in range(players)]

    async def until(cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline or all(t.done() for t in tasks):
                return False
            await asyncio.sleep(0.25)
        return True

    # One session's bytes, seen while the players warm up. (With a short --park-after the first players can be
    # parked before the last is warm, so a single reading after warm-up may already be the parked figure.)
    seen = {"per_session": 0}

    def all_warm() -> bool:
        h = server.health()
        if h["active"]:
            seen["per_session"] = max(seen["per_session"], h["session_bytes"] // h["active"])
        return len(ev["warm"]) == players

    await until(all_warm, 600)
    h_before = server.health()
    idle = players - active
    if parking:  # every idle player parked (a real --park-after, read from /healthz)
        await until(lambda: server.health()["parked"] == idle, 120)
    rss, h = [], []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rss.append(server.rss_mib())
        h.append(server.health())
        await asyncio.sleep(1.0)
    t1 = time.perf_counter()
    m_mid = server.metrics()
    ev["come_back"].set()
    await until(lambda: all(t.done() for t in tasks[active:]), 300)
    ev["stop"].set()
    await asyncio.gather(*tasks)
    m = server.metrics()
    act = outs[:active]
    lat = np.array([x for o in act for x in o["latencies"]]) * 1e3
    window = [sum(1 for t in o["frames"] if t0 <= t <= t1) / (t1 - t0) for o in act]
    back = outs[active:]
    lost = [o["seed"] for o in back if o.get("error") or o.get("index_after") != o.get("index_before", -1) + 1]
    jumps = [float(np.linalg.norm(o["position_after"] - o["position_before"])) for o in back
             if o.get("position_after") is not None and o.get("position_before") is not None]

    def mean_seconds(name: str, at: dict) -> float | None:
        n = at.get(f"{name}_count", 0)
        return at[f"{name}_sum"] / n if n else None

    park_s = mean_seconds("nfd_serve_park_seconds", m_mid)  # parks only (players who leave are timed there too)
    resume_s = mean_seconds("nfd_serve_resume_seconds", m)

    return {
        "parking": parking, "players": players, "active": active, "seconds": t1 - t0,
        "errors": [o["error"] for o in outs if o.get("error")],
        "server_errors": m.get("nfd_serve_server_errors_total", 0),
        "parked_while_idle": min(x["parked"] for x in h) if h else None,
        "players_saw_parked": sum(1 for o in back if o["saw_parked"]),
        "rss_mib_empty": rss_empty, "rss_mib": rss, "rss_mib_median": float(np.median(rss)),
        "session_bytes_before": max(h_before["session_bytes"], players * seen["per_session"]),  # all unparked
        "session_bytes_idle": int(np.median([x["session_bytes"] for x in h])),
        "parked_bytes": int(np.median([x["parked_bytes"] for x in h])),
        "stored_bytes": int(m_mid.get("nfd_serve_stored_bytes", 0)),
        "active_fps": float(sum(window)), "active_fps_per_player": float(np.mean(window)),
        "active_latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "active_latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "parks": m.get("nfd_serve_parks_total", 0),
        "resumed": m.get('nfd_serve_resumes_total{cause="input"}', 0),
        "lost": len(lost), "lost_seeds": lost,
        "agent_jump_px_max": max(jumps) if jumps else None,
        "first_frame_after_idle_ms_max": 1e3 * max((o.get("first_frame_s", 0) for o in back), default=0),
        "park_ms_mean": None if park_s is None else 1e3 * park_s,
        "resume_ms_mean": None if resume_s is None else 1e3 * resume_s,
    }


def run_parking(players: int = 64, active: int = 8, seconds: float = 30.0, park_after: float = 5.0,
                fps: float = 20.0, threads: int = 0, server_log: str | None = None, off: bool = True) -> dict:
    """The parking scenario with parking on (--park-after) and, if `off`, off (--park-after 0)."""
    if not 0 < active < players:
        raise ValueError(f"need 0 < active < players, got {active} of {players}")
    result = {**result_header("serve_load"), "scenario": "parking", "fps": fps, "threads": threads,
              "park_after": park_after}
    for name, after in (("parking_on", park_after), ("parking_off", 0.0))[: 2 if off else 1]:
        with ServerProcess("--fps", str(fps), "--max-players", str(players + 8), "--threads", str(threads),
                           "--park-after", str(after), log_path=server_log) as server:
            health = server.health()
            result["server"] = {k: health[k] for k in ("model", "device", "replica", "batched")}
            ph = asyncio.run(parking_phase(server, players, active, seconds, after > 0))
            ph["server_alive"] = server.proc.poll() is None
            result[name] = ph
        print(f"  {name}: {players} players, {active} active: RSS {ph['rss_mib_median']:.0f} MiB "
              f"(empty server {ph['rss_mib_empty']:.0f}), sessions {ph['session_bytes_idle'] / 2**20:.1f} MiB, "
              f"parked {ph['parked_bytes'] / 2**20:.1f} MiB; active {ph['active_fps']:.1f} frames/s; "
              f"resumed {ph['resumed']:g}, lost {ph['lost']}, errors {len(ph['errors'])}", flush=True)
    result["environment"]["load_average_end"] = os.getloadavg()
    return result


def markdown_parking(result: dict) -> str:
    env = result["environment"]
    on, off = result["parking_on"], result.get("parking_off")
    lines = [f"`nfd-rt serve` parking, {result['server']['model']} on {result['server']['device']}, {on['players']}"
             f" players of whom {on['active']} active, `--park-after {result['park_after']:g}`, {env['cpu']} "
             f"({env['cores']} cores), load average {_load_at_start(env):.1f} at start, commit "
             f"`{env['commit'][:10]}`, {env['date'][:10]}", "",
             "| parking | server RSS MiB (empty server) | session bytes | parked bytes | active players' frames/s "
             "(per player) | p99 ms | parked / resumed / lost | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, ph in (("on", on), ("off", off)):
        if ph is None:
            continue
        lines.append(f"| {name} | {ph['rss_mib_median']:.0f} ({ph['rss_mib_empty']:.0f}) | "
                     f"{ph['session_bytes_idle'] / 2**20:.1f} MiB | {ph['parked_bytes'] / 2**20:.1f} MiB | "
                     f"{ph['active_fps']:.1f} ({ph['active_fps_per_player']:.1f}) | "
                     f"{ph['active_latency_ms_p99']:.0f} | {ph['parked_while_idle']} / {ph['resumed']:g} / "
                     f"{ph['lost']} | {len(ph['errors']) + int(ph['server_errors'])} |")
    lines.append("")
    lines.append(f"Park (snapshot + close) {on['park_ms_mean']:.2f} ms and resume (restore) "
                 f"{on['resume_ms_mean']:.2f} ms per player on average; the first frame after coming back took at "
                 f"most {on['first_frame_after_idle_ms_max']:.0f} ms; the agent moved at most "
                 f"{on['agent_jump_px_max']:.1f} px across the pause (a no-op action).")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    if result.get("scenario") == "parking" or result.get("benchmark") == "serve_load_parking":  # (older results)
        return markdown_parking(result)
    env = result["environment"]
    lines = [f"`nfd-rt serve`, {result['server']['model']} on {result['server']['device']}, {result['fps']:g} FPS "
             f"ticks, {env['cpu']} ({env['cores']} cores), load average {_load_at_start(env):.1f} at start,"
             f" commit `{env['commit'][:10]}`, {env['date'][:10]}", "",
             "| players | frames/s per player | aggregate frames/s | x one player | p50 ms | p99 ms | "
             "player errors | server memory growth |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, ph in result["phases"].items():
        g = ph.get("memory_growth_mib")
        lines.append(f"| {n} | {ph['fps_per_player_mean']:.1f} | {ph['aggregate_fps']:.1f} | "
                     f"{ph.get('aggregate_vs_one_player', float('nan')):.2f}x | {ph['latency_ms_p50']:.1f} | "
                     f"{ph['latency_ms_p99']:.1f} | {len(ph['errors'])} | "
                     f"{'n/a' if g is None else f'{g:+.1f} MiB'} |")
    m = result["server_metrics"]
    a, b = result["runtime_alone_before"], result["runtime_alone_after"]
    lines.append("")
    lines.append(f"The runtime alone on this machine (Session.step in a loop, no server): {a['fps']:.0f} FPS "
                 f"({a['ms_per_frame']:.1f} ms) before the run, {b['fps']:.0f} FPS after; inside the server a "
                 f"tick spent {result.get('ms_per_session_step_in_server', float('nan')):.1f} ms per player "
                 "stepped (step + encoding).")
    lines.append(f"Server errors: {m.get('nfd_serve_server_errors_total', 0):g}; malformed client messages "
                 f"answered: {m.get('nfd_serve_client_errors_total', 0):g}; frames dropped (latest-frame-wins): "
                 f"{m.get('nfd_serve_frames_dropped_total', 0):g}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--players", default="1,16,32", help="comma-separated player counts, one phase each")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase (bounded: the run stops)")
    p.add_argument("--solo-seconds", type=float, default=20.0, help="length of the one-player phase")
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per session (server's --threads)")
    p.add_argument("--no-faults", action="store_true", help="no misbehaving clients in the largest phase")
    p.add_argument("--out", help="JSON path (default: a new file under benchmarks/results/)")
    p.add_argument("--server-log", help="write the server's output here")
    p.add_argument("--markdown-from", help="print the table of a stored result (docs/serve.md) and exit")
    p.add_argument("--parking", action="store_true",
                   help="the parking scenario instead: --players N (default 64) of whom --active are playing")
    p.add_argument("--active", type=int, default=8, help="--parking: players who keep playing")
    p.add_argument("--park-after", type=float, default=5.0, help="--parking: the server's --park-after")
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    if args.parking:
        n = 64 if args.players == p.get_default("players") else int(args.players)
        seconds = 30.0 if args.seconds == p.get_default("seconds") else args.seconds
        result = run_parking(n, args.active, seconds, args.park_after, args.fps, args.threads, args.server_log)
        stem = f"serve_parking_{result['server']['device']}_{result['environment']['date'][:10]}"
    else:
        players = sorted({int(x) for x in args.players.split(",")})
        result = run(players, args.seconds, args.fps, not args.no_faults, args.threads, args.solo_seconds,
                     args.server_log)
        stem = f"serve_load_{result['server']['device']}_{result['environment']['date'][:10]}"
    out = Path(args.out) if args.out else None
    if out is None:
        out = HERE / "results" / f"{stem}.json"
        k = 2
        while out.exists():
            out = HERE / "results" / f"{stem}_{k}.json"
            k += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    for ph in result.get("phases", {}).values():  # keep the file small: the samples are summarized above
        ph.pop("latencies", None)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
