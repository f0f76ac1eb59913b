"""`nfd-rt serve` parking and resuming (docs/serve.md, "Parking idle players"): an idle player's session is
snapshotted and freed, its next input restores it and its video goes on bitwise as if never parked; a
disconnected player continues its world with ?resume=; the store of worlds keeps within --max-parked-bytes by the
stated rule.

In-process servers run on the server's replaceable clock (an idle player is idle without waiting); the reconnect
tests use a real `nfd-rt serve` on loopback. The Ray Serve resume (another replica) is in tests/test_serve_ray.py,
the load scenario in benchmarks/serve_load.py (`--parking`), run short here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from serve_helpers import (KEYS, ROOM, BlockingSocket, decode, keys_msg, load_bench, need_serve_extra,
                           reference_frames, until)

need_serve_extra()

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

import nfd_rt  # noqa: E402
from nfd_rt.demo import MODEL_PATH  # noqa: E402
from nfd_rt.serve import protocol, worlds  # noqa: E402
from nfd_rt.serve.worlds import World, WorldStore  # noqa: E402


def metric(srv, name: str, labels: dict | None = None) -> float:
    return srv.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# -- the store alone ----------------------------------------------------------------------------------------------
def world(n: int, seed: int = 0) -> World:
    return World(bytes(n), None, seed)


def test_store_rules():
    now = [0.0]
    s = WorldStore(max_bytes=1000, keep_s=60, lease_s=None, clock=lambda: now[0])
    assert s.put("a", world(300), connected=True) == []
    assert s.put("k", world(300), connected=False) == []  # a disconnected player's world, kept 60 s
    assert s.put("b", world(300), connected=True) == []
    assert s.stats()["bytes"] == 900 and s.stats()["parked"] == 2 and s.stats()["kept"] == 1
    # Over the cap: the kept world goes first, though "a" is older...
    assert s.put("c", world(300), connected=True) == ["k"]
    # ...then the parked worlds, oldest first.
    assert s.put("d", world(300), connected=True) == ["a"]
    assert s.take("k") == (None, worlds.GONE_DROPPED) and s.take("a") == (None, worlds.GONE_DROPPED)
    got, why = s.take("b")
    assert got.nbytes == 300 and why is None
    assert s.take("b") == (None, worlds.GONE_TAKEN)  # taken once only
    assert s.take("never") == (None, worlds.GONE_UNKNOWN)
    assert s.put("huge", world(1001), connected=True) == ["huge"]  # over the cap alone: not stored
    assert s.take("huge") == (None, worlds.GONE_TOO_BIG)
    # Parked worlds wait for their (connected) player; a released one is kept 60 s, then expires.
    now[0] += 10_000
    assert s.stats()["worlds"] == 2
    s.release("c")
    now[0] += 59.9
    assert s.stats()["kept"] == 1
    now[0] += 0.2
    assert s.take("c") == (None, worlds.GONE_EXPIRED)
    assert s.stats() | {"max_bytes": 0} == {"worlds": 1, "parked": 1, "kept": 0, "bytes": 300, "max_bytes": 0,
                                           "keep_s": 60.0, "put": 5, "taken": 1, "dropped": 3, "expired": 1}


def test_store_lease_ends_with_its_server():
    """On Ray Serve the store outlives replicas: a parked world whose replica stops renewing its lease expires
    lease + keep seconds after the last renewal; a world renewed in time stays."""
    now = [0.0]
    s = WorldStore(max_bytes=10_000, keep_s=30, lease_s=60, clock=lambda: now[0])
    s.put("alive", world(10), connected=True)
    s.put("orphan", world(10), connected=True)
    for _ in range(10):
        now[0] += 20
        s.touch(["alive"])
    assert s.take("orphan") == (None, worlds.GONE_EXPIRED)  # 200 s > 60 + 30 after its put
    assert s.take("alive")[0] is not None


def test_sizes_parse_and_the_default_is_a_quarter_of_memory():
    assert worlds.parse_size("auto") is None
    assert worlds.parse_size("4G") == 4 << 30 and worlds.parse_size("1.5M") == 3 << 19
    assert worlds.parse_size("512MiB") == 512 << 20 and worlds.parse_size("1000") == 1000
    for bad in ("lots", "-1", "4X", "0"):
        with pytest.raises(ValueError):
            worlds.parse_size(bad)
    assert WorldStore().max_bytes == worlds.memory_limit() // 4 > 0
    # One world of the shipped model at a full cache, as docs/snapshots.md gives it (590,452 bytes) + its frame:
    # the runtime's bound of the snapshot (estimate_memory's snapshot_max: the longest metadata) + the frame.
    cfg = nfd_rt.Model(MODEL_PATH).config
    assert 590_452 + 64 * 64 * 3 <= worlds.world_bytes(MODEL_PATH, cfg) <= 590_452 + 64 * 64 * 3 + 4096
    half_state = 589_824 // 2  # bf16 K/V: half of the fp32 state (docs/snapshots.md), the rest as before
    from nfd_rt._native import core

    if core().cpu_bf16()["ok"]:  # a 16-bit session is sized only where the CPU computes in bf16
        bf16 = worlds.world_bytes(MODEL_PATH, cfg, "cpu", "bfloat16")
        assert half_state + 64 * 64 * 3 <= bf16 <= half_state + 64 * 64 * 3 + 4096 + 36


# -- parking in a server (fake sockets and clock, real sessions) ----------------------------------------------
def make_server(**kw):
    from nfd_rt.serve.server import ServeConfig, Server

    srv = Server(ServeConfig(threads=1, fps=50, stats_interval=3600, **kw))
    now = [1000.0]
    srv.clock = lambda: now[0]
    return srv, now


async def play(srv, p, key) -> None:
    """One action; wait until its frame has been made and handed to the (reading) socket."""
    before = p.frames_sent
    srv.on_message(p, keys_msg(key))
    await until(lambda: p.frames_sent > before or p.close_request is not None)


async def open_players(srv, *seeds):
    from nfd_rt.serve.app import _send

    players = [srv.join("png", s) for s in seeds]
    sockets = [BlockingSocket(reading=True) for _ in players]
    senders = [asyncio.ensure_future(_send(srv, ws, p)) for ws, p in zip(sockets, players)]
    await until(lambda: all(p.frames_sent == 1 for p in players))  # the rooms' context frames
    return players, sockets, senders


async def shut(srv, players, senders):
    for p in players:  # as the app does: left first, then the senders cancelled (they end at a wake-up anyway)
        srv.leave(p)
        p.wake.set()
    for t in senders:
        t.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    await srv.stop()


def test_idle_player_is_parked_freed_and_resumes_bitwise():
    """A player silent past --park-after (on the server's clock) is parked: its session closed (the server's
    session bytes drop by one session), its world in the store. Its next input restores it before the step, and
    its video is bitwise the video of a session never parked. Pings keep a parked player connected but are not
    input; another player plays on throughout."""

    async def scenario():
        srv, now = make_server(park_after=10, idle_timeout=60)
        (p, other), (ws, _), senders = await open_players(srv, ROOM, 3)
        for k in KEYS[:6]:
            await play(srv, p, k)
        one = p.session_bytes
        before = srv.health()
        now[0] += 9.9  # not yet
        await play(srv, other, "ArrowUp")
        not_yet = p.parked
        now[0] += 0.2
        srv.on_message(p, '{"type": "ping", "t": 1}')  # a message, not input
        await play(srv, other, "ArrowDown")
        await until(lambda: p.parked)
        parked = srv.health()
        stored = await srv.store_stats()
        for _ in range(5):  # parked for long, kept alive by pings, while the other plays
            now[0] += 9
            srv.on_message(p, '{"type": "ping", "t": 2}')
            await play(srv, other, None)
        still_parked = p.parked and p.session is None and p.close_request is None
        for k in KEYS[6:]:  # more than the window: the restored cache rolls over
            await play(srv, p, k)
        after = srv.health()
        counts = (metric(srv, "nfd_serve_parks_total"), metric(srv, "nfd_serve_resumes_total", {"cause": "input"}),
                  metric(srv, "nfd_serve_players_parked"), metric(srv, "nfd_serve_session_bytes"))
        pongs = [json.loads(t) for t in ws.sent if isinstance(t, str)]
        frames = [decode(b) for b in ws.sent if isinstance(b, bytes)]
        await shut(srv, [p, other], senders)
        return dict(one=one, before=before, not_yet=not_yet, parked=parked, stored=stored,
                    still_parked=still_parked, after=after, counts=counts, pongs=pongs, frames=frames,
                    dropped=p.frames_dropped, index=p.frame_index)

    r = asyncio.run(scenario())
    assert r["one"] > 0 and r["before"]["session_bytes"] == 2 * r["one"] and r["before"]["active"] == 2
    assert r["not_yet"] is False
    parked = r["parked"]
    assert parked["parked"] == 1 and parked["active"] == 1 and parked["session_bytes"] == r["one"]  # freed
    one_world = parked["parked_bytes"]
    assert 64 * 64 * 3 < one_world < 600_000
    assert r["stored"]["worlds"] == 1 and r["stored"]["bytes"] == one_world and r["stored"]["parked"] == 1
    assert r["still_parked"]
    assert r["after"]["parked"] == 0 and r["after"]["parked_bytes"] == 0 and r["after"]["session_bytes"] == 2 * r["one"]
    assert r["counts"] == (1.0, 1.0, 0.0, 2 * r["one"])
    assert {"type": "pong", "t": 2} in r["pongs"]
    want = reference_frames(KEYS)
    assert r["dropped"] == 0 and len(r["frames"]) == len(want) and r["index"] == len(want)
    for i, (got, ref) in enumerate(zip(r["frames"], want)):
        assert np.array_equal(got, ref), f"frame {i} differs from the never-parked session's"


def test_parked_bytes_cap_drops_kept_then_oldest_parked():
    """--max-parked-bytes of about 2.5 worlds: the world of a disconnected player is dropped before a parked one,
    then the player parked longest is closed at once with 4507 and a reason; the others resume."""

    async def scenario():
        probe, _ = make_server()
        cap = int(2.5 * worlds.world_bytes(probe.model_path, probe.model_cfg, probe.device, probe.dtype))
        await probe.stop()
        srv, now = make_server(park_after=10, max_parked_bytes=cap)
        (a, b, c, d), (wa, *_), senders = await open_players(srv, 1, 2, 3, 4)
        for p in (a, b, c, d):
            for k in KEYS[:10]:  # a full cache: every world the same size
                await play(srv, p, k)
        # Inputs staggered on the server's clock (t = 1000 now): a parks at 1010, b at 1015.5, c at 1020.5.
        b.last_input, c.last_input, d.last_input = 1005.5, 1010.5, 1005.5
        now[0] = 1010.0
        await until(lambda: a.parked)
        srv.leave(d)  # d disconnects: its world is kept for a reconnect
        await until(lambda: d.departed.is_set())
        now[0] = 1015.5  # b parks: over the cap, d's kept world goes, though a's is older
        await until(lambda: b.parked)
        kept_gone = await srv.worlds.take(d.token)
        now[0] = 1020.5  # c parks: a's world goes, and a is told at once
        await until(lambda: c.parked and wa.closed is not None)
        await play(srv, b, "ArrowLeft")  # b and c come back
        await play(srv, c, "ArrowLeft")
        out = dict(kept_gone=kept_gone, closed=wa.closed, b=(b.parked, b.session is not None, b.close_request),
                   c=(c.parked, c.session is not None), stats=await srv.store_stats(),
                   resumes=metric(srv, "nfd_serve_resumes_total", {"cause": "input"}))
        await shut(srv, [a, b, c], senders)
        return out, cap

    out, cap = asyncio.run(scenario())
    assert out["kept_gone"] == (None, worlds.GONE_DROPPED)
    assert out["closed"] == (protocol.CLOSE_WORLD_LOST,
                             "your parked world was dropped: the server's parked worlds reached --max-parked-bytes")
    assert out["b"] == (False, True, None) and out["c"] == (False, True)
    assert out["stats"]["worlds"] == 0 and out["stats"]["dropped"] == 2 and out["stats"]["max_bytes"] == cap
    assert out["resumes"] == 2


def test_idle_timeout_closes_a_parked_player_and_keeps_its_world():
    """Parking first, closing later: parked at --park-after, closed (4408) at --idle-timeout, its world kept
    --resume-within seconds for ?resume=, then gone."""

    async def scenario():
        srv, now = make_server(park_after=5, idle_timeout=20, resume_within=100)
        (p,), (wp,), senders = await open_players(srv, ROOM)
        await play(srv, p, "ArrowRight")
        now[0] += 5
        await until(lambda: p.parked)
        now[0] += 16
        await until(lambda: wp.closed is not None)
        srv.leave(p)
        await until(lambda: p.departed.is_set())
        kept = await srv.store_stats()
        r, why = await srv.admit("png", 0, p.token)  # a reconnect continues it
        await until(lambda: r.frame_index == 2)  # its last frame, shown again
        resumed = (r.resumed, r.seed, why, r.outbox is not None)
        srv.leave(r)
        await until(lambda: r.departed.is_set())
        now[0] += 101  # not back in time: gone
        late, why_late = await srv.admit("png", 0, p.token)
        out = dict(closed=wp.closed, kept=kept, resumed=resumed, late=(late.resumed, why_late),
                   failures=metric(srv, "nfd_serve_resume_failures_total", {"reason": "expired"}))
        await shut(srv, [late], senders)
        return out

    out = asyncio.run(scenario())
    assert out["closed"] == (protocol.CLOSE_IDLE, "idle for more than 20 s")
    assert out["kept"]["kept"] == 1 and out["kept"]["parked"] == 0
    assert out["resumed"] == (True, ROOM, None, True)
    assert out["late"] == (False, worlds.GONE_EXPIRED) and out["failures"] == 1


def test_parking_off_and_no_keeping():
    """--park-after 0 never parks; --resume-within 0 keeps nothing of a player who left."""

    async def scenario():
        srv, now = make_server(park_after=0, resume_within=0)
        (p, q), _, senders = await open_players(srv, 1, 2)
        now[0] += 50
        await play(srv, q, None)
        live = (p.parked, p.session is not None)
        srv.leave(p)
        await until(lambda: p.departed.is_set())
        out = dict(live=live, stats=await srv.store_stats(), health=srv.health())
        await shut(srv, [q], senders)
        return out

    out = asyncio.run(scenario())
    assert out["live"] == (False, True)
    assert out["stats"]["worlds"] == 0 and out["stats"]["put"] == 0
    assert out["health"]["active"] == 1 and out["health"]["players"] == 1


# -- reconnecting with ?resume= over real sockets -----------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bench = load_bench()
    log = tmp_path_factory.mktemp("park") / "server.log"
    with bench.ServerProcess("--max-players", "4", "--threads", "1", log_path=str(log)) as s:
        yield s
        assert s.proc.poll() is None, f"the server died: {log.read_text()[-2000:]}"


def poll(get, ok, timeout: float = 60):
    """get() until ok(value): for what the server does on its next tick (the timeout only guards a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        v = get()
        if ok(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def recv_frame(ws) -> np.ndarray:
    while True:
        m = ws.recv(timeout=30)
        if isinstance(m, bytes):
            return decode(m)


def test_reconnect_with_the_resume_token_continues_the_world(server):
    """Disconnect, reconnect with ?resume=TOKEN: the hello says resumed, the first frame is the last one seen, and
    the video goes on bitwise as a session never interrupted. A second connection with the token takes the world
    over (the first is closed with 4409); a token nobody has gets a new world and the reason."""
    want = reference_frames(KEYS)
    got = []
    with connect(f"{server.ws_url}?format=png&seed={ROOM}") as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["resumed"] is False and worlds.TOKEN_RE.match(hello["resume"])
        token = hello["resume"]
        got.append(recv_frame(ws))
        for k in KEYS[:5]:
            ws.send(keys_msg(k))
            got.append(recv_frame(ws))
    with connect(f"{server.ws_url}?format=png&resume={token}") as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["resumed"] is True and hello["resume"] == token and hello["seed"] == ROOM
        assert np.array_equal(recv_frame(ws), got[-1])  # where the player left
        for k in KEYS[5:11]:
            ws.send(keys_msg(k))
            got.append(recv_frame(ws))
        with connect(f"{server.ws_url}?format=png&resume={token}") as ws2:  # the same player, another tab
            assert json.loads(ws2.recv(timeout=30))["resumed"] is True
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    ws.recv(timeout=30)
            assert e.value.rcvd.code == protocol.CLOSE_WORLD_TAKEN
            assert np.array_equal(recv_frame(ws2), got[-1])
            for k in KEYS[11:]:
                ws2.send(keys_msg(k))
                got.append(recv_frame(ws2))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert np.array_equal(g, w), f"frame {i} differs from the uninterrupted session's"
    with connect(f"{server.ws_url}?resume={'x' * 32}") as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["resumed"] is False and hello["resume_error"] == worlds.GONE_UNKNOWN
        assert hello["resume"] != "x" * 32  # a new world, a new token
        while not isinstance(ws.recv(timeout=30), bytes):  # its first frame: its session exists, so it is kept
            pass
    with connect(f"{server.ws_url}?resume=short") as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=30)
        assert e.value.rcvd.code == protocol.CLOSE_BAD_REQUEST
    h = poll(server.health, lambda h: h["worlds"]["kept"] == 2)  # the two players who left, kept a tick later
    assert h["worlds"]["kept"] == 2, h["worlds"]
    assert {"active", "parked", "session_bytes", "parked_bytes", "park_after", "resume_within"} <= set(h)
    assert h["park_after"] == 30 and h["resume_within"] == 300 and h["worlds"]["taken"] == 2
    m = server.metrics()
    assert m['nfd_serve_resumes_total{cause="reconnect"}'] == 2
    assert m['nfd_serve_resume_failures_total{reason="unknown"}'] == 1
    assert m["nfd_serve_worlds_saved_total"] >= 2 and "nfd_serve_stored_bytes" in m


def test_cli_parking_options():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "nfd_rt.cli", "serve", *args], capture_output=True, text=True,
                              timeout=60)

    r = run("--park-after", "-1")
    assert r.returncode == 2 and "--park-after: must be a finite number >= 0 (0: off), got -1" in r.stderr
    r = run("--max-parked-bytes", "lots")
    assert r.returncode == 2 and "--max-parked-bytes: expected 'auto', a number of bytes" in r.stderr
    r = run("--max-parked-bytes", "100K")
    assert r.returncode == 1 and "nfd-rt serve: error: --max-parked-bytes 102400 cannot hold one world of model " \
        "tiny" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    h = run("--help").stdout
    assert "--park-after" in h and "--resume-within" in h


# -- the load scenario, short -------------------------------------------------------------------------------------
def test_short_parking_load():
    """benchmarks/serve_load.py --parking, small: idle players parked while the others play, every one of them
    back afterwards with its world where it was."""
    bench = load_bench()
    r = bench.run_parking(players=8, active=2, seconds=2, park_after=0.5, threads=1, off=False)
    on = r["parking_on"]
    assert on["errors"] == [] and on["server_errors"] == 0
    assert on["parked_while_idle"] == 6 and on["resumed"] == 6 and on["lost"] == 0
    assert on["players_saw_parked"] == 6  # their stats messages said so
    assert on["agent_jump_px_max"] < 4  # a no-op after the pause: the agent where it was (4 px = one step)
    assert on["session_bytes_idle"] < on["session_bytes_before"]
    assert on["active_fps"] > 0
