"""`nfd-rt serve` on Ray Serve: a local Ray instance with 2 CPU replicas. Players land on both replicas, each
keeps its replica (its session goes on), a killed replica's players get a clean close (1012) and reconnect to a
fresh session. Kept small: Ray's start-up dominates (about 20-45 s on 2 busy cores).
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from serve_helpers import decode, load_bench, need_serve_extra

need_serve_extra()
pytest.importorskip("ray.serve", reason="needs the ray extra (pip install '.[ray]')")

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from nfd_rt.serve import protocol  # noqa: E402


@pytest.fixture(scope="module")
def ray_serve(tmp_path_factory):
    """`nfd-rt serve --ray --replicas 2` as a user runs it (it starts a local Ray instance); this process joins
    that Ray instance as a second driver to find and kill a replica."""
    import subprocess
    import urllib.request

    import ray

    bench = load_bench()
    port = bench.free_port()
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(bench.serve_command() + [
            "serve", "--ray", "--replicas", "2", "--cpus-per-replica", "0.5", "--threads", "1", "--max-players", "4",
            "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            assert proc.poll() is None, f"nfd-rt serve --ray exited: {log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 240, f"not ready after 240 s: {log.read_text()[-3000:]}"
            # The proxy answers as soon as one replica is up; the CLI says when all are (serve.run returned).
            if "nfd-rt serve --ray: http" not in log.read_text():
                time.sleep(0.5)
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
                assert json.loads(r.read())["status"] == "ok"
            break
        started = time.monotonic() - t0
        ray.init(address="auto", log_to_driver=False)
        yield f"ws://127.0.0.1:{port}/ws", started
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(__import__("signal").SIGINT)  # Ctrl-C: deletes the app, the Ray instance ends with it
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def frame(ws) -> bytes:
    while True:
        m = ws.recv(timeout=60)
        if isinstance(m, bytes):
            return m


def play(ws, n: int) -> int:
    """n no-op frames; returns the session's frame index from the next stats message."""
    for _ in range(n):
        ws.send('{"type": "keys", "keys": []}')
        frame(ws)
    while True:
        m = ws.recv(timeout=60)
        if isinstance(m, str) and json.loads(m)["type"] == "stats":
            return json.loads(m)["frame"]


def test_players_pinned_to_replicas_and_a_lost_replica_closes_cleanly(ray_serve):
    import ray

    url, started = ray_serve
    players = []
    opened = contextlib.ExitStack()
    for _ in range(4):
        ws = opened.enter_context(connect(url))
        hello = json.loads(ws.recv(timeout=60))
        assert decode(frame(ws)).shape == (64, 64, 3)
        players.append((ws, hello))
    replicas = {h["replica"] for _, h in players}
    assert len(replicas) == 2, f"players should land on both replicas, got {replicas}"
    # Each keeps its replica: its session (held only there) goes on frame after frame.
    for ws, _ in players:
        assert play(ws, 3) == 1 + 3
    for ws, _ in players:
        assert play(ws, 2) == 1 + 3 + 2

    victim = players[0][1]["replica"]
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + victim))
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    for ws, hello in players:
        if hello["replica"] == victim:
            with pytest.raises(ConnectionClosed) as e:
                play(ws, 5)
            assert e.value.rcvd is not None and e.value.rcvd.code == protocol.CLOSE_REPLICA_LOST, e.value
        else:
            assert play(ws, 2) == 1 + 3 + 2 + 2  # the other replica's players never notice
    opened.close()
    # Reconnecting gives a fresh session on a live replica.
    with connect(url) as ws:
        hello = json.loads(ws.recv(timeout=60))
        assert hello["replica"] != victim and hello["session"] not in {h["session"] for _, h in players}
        frame(ws)
        assert play(ws, 2) == 1 + 2
    print(f"Ray + Serve with 2 replicas started in {started:.1f} s")


def test_module_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nfd_rt.serve.ray", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--replicas" in r.stdout
