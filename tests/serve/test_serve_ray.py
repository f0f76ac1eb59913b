"""`nfd-rt serve` on Ray Serve: a local Ray instance with 2 CPU replicas. Players land on both replicas, each
keeps its replica (its session goes on), a killed replica's players get a clean close (1012) and reconnect to a
fresh session; a player parked on a replica that is then killed continues its world on another replica with
?resume=, bitwise the video of an uninterrupted session. Kept small: Ray's start-up dominates (about 20-45 s on
2 busy cores).
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest

from serve_helpers import KEYS, ROOM, decode, keys_msg, load_bench, need_serve_extra, reference_frames

need_serve_extra()
pytest.importorskip("ray.serve", reason="needs the ray extra (pip install '.[ray]')")

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

from nfd_rt.serve import protocol  # noqa: E402


def connect(url: str):
    """A WebSocket to Serve's proxy, with a handshake as patient as the replies (websockets' own limit is 10 s):
    right after a replica is killed, Serve routes a new connection while it restarts one, which on 2 busy cores
    took longer than that."""
    return ws_connect(url, open_timeout=60)


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
            "--park-after", "1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
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
    kill_replica(victim)
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


def kill_replica(replica: str) -> None:
    import ray

    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + replica))
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)


def test_a_parked_world_continues_on_another_replica(ray_serve):
    """Play, disconnect, reconnect with ?resume= (the world goes on, on whichever replica); go idle until parked
    (--park-after 1, the stats say so), then the replica is killed: the player gets 1012, reconnects with
    ?resume=, lands on another replica, sees its last frame and plays on. Every frame equals the uninterrupted
    session's, bitwise (the players here play alone, so each step is a batch of one, as in the reference)."""
    url, _ = ray_serve
    url = url + "?format=png"
    want = reference_frames(KEYS)
    got = []
    with connect(f"{url}&seed={ROOM}") as ws:
        hello = json.loads(ws.recv(timeout=60))
        token = hello["resume"]
        got.append(decode(frame(ws)))
        for k in KEYS[:4]:
            ws.send(keys_msg(k))
            got.append(decode(frame(ws)))
    with connect(f"{url}&resume={token}") as ws:
        hello = json.loads(ws.recv(timeout=60))
        assert hello["resumed"] is True, hello
        assert np.array_equal(decode(frame(ws)), got[-1])
        for k in KEYS[4:9]:
            ws.send(keys_msg(k))
            got.append(decode(frame(ws)))
        victim = hello["replica"]
        while True:  # idle until parked: its world is now in the application's store
            m = ws.recv(timeout=60)
            if isinstance(m, str) and json.loads(m).get("parked"):
                break
        kill_replica(victim)
        with pytest.raises(ConnectionClosed) as e:
            while True:
                ws.recv(timeout=60)
        assert e.value.rcvd is not None and e.value.rcvd.code == protocol.CLOSE_REPLICA_LOST, e.value
    with connect(f"{url}&resume={token}") as ws:
        hello = json.loads(ws.recv(timeout=60))
        assert hello["resumed"] is True and hello["replica"] != victim, (hello, victim)
        assert np.array_equal(decode(frame(ws)), got[-1])  # where it was
        for k in KEYS[9:]:
            ws.send(keys_msg(k))
            got.append(decode(frame(ws)))
        assert play(ws, 0) == len(KEYS) + 1
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert np.array_equal(g, w), f"frame {i} differs from the uninterrupted session's"


def test_store_waits_a_little_for_a_world_on_its_way():
    """A reconnect may reach another replica before the replica the player left has stored its world: the
    store's take for a reconnect waits up to a grace period for its put; a parked player's own take never waits."""
    import asyncio

    from nfd_rt.serve import ray as serve_ray
    from nfd_rt.serve import worlds

    store_class = serve_ray.WorldStoreDeployment.func_or_class

    async def scenario():
        store = store_class(10_000, keep_s=60, lease_s=60, grace_s=30)
        w = worlds.World(b"x" * 100, None, 7)
        waiting = asyncio.ensure_future(store.take("t" * 20, True))
        await asyncio.sleep(0)
        assert not waiting.done()
        await store.put("t" * 20, w, False)
        got = await asyncio.wait_for(waiting, 5)
        no_wait = await asyncio.wait_for(store.take("u" * 20), 5)
        store.grace_s = 0.01
        late = await store.take("v" * 20, True)
        return got, no_wait, late

    got, no_wait, late = asyncio.run(scenario())
    assert got[0] is not None and got[0].seed == 7 and got[1] is None
    assert no_wait == (None, worlds.GONE_UNKNOWN) and late == (None, worlds.GONE_UNKNOWN)


def test_module_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nfd_rt.serve.ray", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--replicas" in r.stdout
