"""`nfd-rt serve` over real sockets on loopback: the protocol, players moving the agent as the game says, the
guards (token, max players, idle, abuse, slow clients), metrics, and a short load + fault run.

The browser test is tests/serve/test_serve_browser.py, the Ray Serve test tests/serve/test_serve_ray.py; the long load
test is benchmarks/serve_load.py (60 s, results in benchmarks/results/).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from serve_helpers import BlockingSocket, act_and_wait, decode, load_bench, need_serve_extra, until

need_serve_extra()

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from nfd_rt.demo import game  # noqa: E402
from nfd_rt.serve import protocol  # noqa: E402
from nfd_rt.serve.server import ServeConfig  # noqa: E402

ROOM = 25  # a room with free space in every direction, where the shipped model tracks the game within ~1 px


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def server(bench, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with bench.ServerProcess("--max-players", "8", "--threads", "1", log_path=str(log)) as s:
        yield s
        assert s.proc.poll() is None, f"the server died: {log.read_text()[-2000:]}"


@pytest.fixture(scope="module")
def guarded(bench, tmp_path_factory):
    """A server with a token and room for 2 players."""
    log = tmp_path_factory.mktemp("serve") / "guarded.log"
    with bench.ServerProcess("--token", "s3cret", "--max-players", "2", "--threads", "1", log_path=str(log)) as s:
        yield s


def hello_and_first_frame(ws) -> tuple[dict, bytes]:
    hello = json.loads(ws.recv(timeout=30))
    assert hello["type"] == "hello"
    return hello, next_frame(ws)


def next_frame(ws, timeout: float = 30) -> bytes:
    while True:
        m = ws.recv(timeout=timeout)
        if isinstance(m, bytes):
            return m


def next_text(ws, kind: str, timeout: float = 30) -> dict:
    while True:
        m = ws.recv(timeout=timeout)
        if isinstance(m, str) and json.loads(m)["type"] == kind:
            return json.loads(m)


def close_code(ws, timeout: float = 30) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=timeout)
    return e.value.rcvd.code, e.value.rcvd.reason


def hold(ws, keys: list[str], frames: int) -> np.ndarray:
    for _ in range(frames):
        ws.send(json.dumps({"type": "keys", "keys": keys}))
        f = next_frame(ws)
    return decode(f)


# -- protocol (no server) ---------------------------------------------------------------------------------------
def test_messages_parse_or_say_what_is_wrong():
    km = protocol.GRIDWORLD_KEYS
    a = protocol.parse_message('{"type": "action", "action": [0, 1, 0, 0, 0, 0, 0, 0.5]}', 8, km)
    assert a.vector.dtype == np.float32 and a.vector.tolist() == [0, 1, 0, 0, 0, 0, 0, 0.5]
    k = protocol.parse_message('{"type": "keys", "keys": ["ArrowLeft", "KeyW"]}', 8, km)
    assert k.vector.tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert protocol.parse_message('{"type": "keys", "keys": []}', 8, km).vector.sum() == 0
    assert protocol.parse_message('{"type": "reset", "seed": 7}', 8, km).seed == 7
    bad = {
        "x": "not valid JSON", "[1]": "JSON object", '{"type": "fly"}': "unknown message type",
        '{"type": "action", "action": [1]}': "list of 8 numbers", '{"type": "action", "action": "up"}': "list of 8",
        '{"type": "action", "action": [NaN, 0, 0, 0, 0, 0, 0, 0]}': "finite",
        '{"type": "action", "action": [true, 0, 0, 0, 0, 0, 0, 0]}': "finite",
        '{"type": "keys", "keys": ["F13"]}': "unknown key", '{"type": "keys", "keys": "ArrowUp"}': "list of at most",
        '{"type": "reset", "seed": -1}': "seed", '{"type": "reset", "seed": 1.5}': "seed",
        "[" * 2000 + "]" * 2000: "JSON", "y" * 5000: "longer than the limit",
    }
    for text, why in bad.items():
        with pytest.raises(protocol.ProtocolError, match=why):
            protocol.parse_message(text, 8, km)
    with pytest.raises(protocol.ProtocolError, match="binary"):
        protocol.parse_message(b"\x00", 8, km)
    with pytest.raises(protocol.ProtocolError, match="no key map"):
        protocol.parse_message('{"type": "keys", "keys": []}', 8, None)


def test_keymap_file_and_worlds(tmp_path):
    from nfd_rt.demo import MODEL_PATH

    p = tmp_path / "keys.json"
    p.write_text('{"Space": 4, "KeyJ": 5}')
    assert protocol.load_keymap(str(p), 8) == {"Space": 4, "KeyJ": 5}
    p.write_text('{"Space": 8}')
    with pytest.raises(ValueError, match="not an action dimension"):
        protocol.load_keymap(str(p), 8)
    assert protocol.make_world("auto", MODEL_PATH, None, 8).name == "gridworld"
    assert protocol.make_world("auto", str(p), None, 8).name == "blank"
    with pytest.raises(ValueError, match="world must be"):
        protocol.make_world("moon", MODEL_PATH, None, 8)


def test_step_many_is_one_batched_step_of_a_shared_model(monkeypatch):
    """A tick's players are sessions of one Model, stepped by one nfd_rt.step_batch call; their frames are the
    ones each session would give alone (within a uint8 level: the batched GEMMs round differently)."""
    import nfd_rt
    from nfd_rt.demo import MODEL_PATH
    from nfd_rt.serve import step_many

    m = nfd_rt.Model(MODEL_PATH)
    sessions = [m.session(seed=i) for i in range(3)]
    alone = [m.session(seed=i) for i in range(3)]
    actions = [np.eye(8, dtype=np.float32)[i] for i in range(3)]
    calls = []
    real = nfd_rt.step_batch
    monkeypatch.setattr(nfd_rt, "step_batch", lambda s, a: calls.append(len(s)) or real(s, a), raising=False)
    frames = step_many(sessions, actions)
    assert calls == [3]  # one batched call for the tick
    for f, s, a in zip(frames, alone, actions):
        assert np.abs(f.astype(int) - s.step(a).astype(int)).max() <= 1


# -- HTTP endpoints ---------------------------------------------------------------------------------------------
def test_page_health_and_metrics(server):
    page = server.get("/").decode()
    assert '<canvas id="screen"' in page and "play.js" in page
    assert b"new WebSocket" in server.get("/play.js")
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["fps"] == 20 and h["device"] == "cpu"
    assert {"players", "max_players", "frames_per_second", "replica", "batched"} <= set(h)
    m = server.get("/metrics").decode()
    for name in ("nfd_serve_players", "nfd_serve_frames_total", "nfd_serve_frames_dropped_total",
                 "nfd_serve_step_seconds_bucket", "nfd_serve_action_to_frame_seconds_bucket",
                 "process_resident_memory_bytes"):
        assert name in m, name


# -- players ----------------------------------------------------------------------------------------------------
def test_keys_move_the_agent_the_way_the_game_does(server):
    with connect(f"{server.ws_url}?seed={ROOM}") as ws:
        hello, first = hello_and_first_frame(ws)
        assert hello["model"] == "tiny" and hello["width"] == hello["height"] == 64 and hello["seed"] == ROOM
        assert "ArrowRight" in hello["keys"] and hello["world"] == "gridworld"
        img = decode(first)
        assert first[:2] == b"\xff\xd8" and img.shape == (64, 64, 3)  # JPEG by default
        world = game.GridWorld(ROOM)
        start = game.agent_position(img)
        assert np.linalg.norm(start - game.agent_position(world.render())) < 1.5
        for keys, key in ((["ArrowRight"], "right"), (["KeyS"], "down"), (["KeyA"], "left")):  # arrows and WASD
            before = game.agent_position(world.render())
            for _ in range(5):
                truth = world.step(game.action_vector(key))
            pos = game.agent_position(hold(ws, keys, 5))
            moved, want = pos - before, game.agent_position(truth) - before
            assert np.abs(want).max() >= 12, "the test's room must leave space to move"
            assert np.linalg.norm(pos - game.agent_position(truth)) < 4, (keys, pos, game.agent_position(truth))
            assert np.all(np.sign(np.round(moved / 4)) == np.sign(want)), (keys, moved, want)
        stats = next_text(ws, "stats")
        # frame_index counts the context frame: 1 + 15 generated; the room's frame was sent too.
        assert stats["frame"] == 16 and stats["players"] >= 1 and stats["sent"] >= 16


def test_reset_png_and_players_are_independent(server):
    def no_ops(ws, n):
        return [hold(ws, [], 1) for _ in range(n)]

    with connect(f"{server.ws_url}?format=png&seed={ROOM}") as b:  # a player alone: its video for this seed
        hello_and_first_frame(b)
        alone = no_ops(b, 4)
    with connect(f"{server.ws_url}?format=png&seed=3") as a, connect(f"{server.ws_url}?format=png&seed={ROOM}") as b:
        ha, fa = hello_and_first_frame(a)
        hb, _ = hello_and_first_frame(b)
        assert ha["session"] != hb["session"] and ha["format"] == "png"
        assert fa[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(decode(fa), game.GridWorld(3).render())  # the context frame, lossless
        a.send(json.dumps({"type": "reset", "seed": 5}))
        assert np.array_equal(decode(next_frame(a)), game.GridWorld(5).render())
        # Same seed, same video, whatever another player does meanwhile: nothing a client sends names a session.
        together = []
        for _ in range(4):
            hold(a, ["ArrowDown"], 1)
            together += no_ops(b, 1)
        assert all(np.array_equal(x, y) for x, y in zip(alone, together))


def test_malformed_messages_get_errors_and_repeated_abuse_closes(server):
    with connect(server.ws_url) as ws:
        hello_and_first_frame(ws)
        for text in ("nonsense", '{"type": "keys", "keys": ["F13"]}', b"\x01\x02"):
            ws.send(text)
            err = next_text(ws, "error")
            assert err["message"]
        ws.send(json.dumps({"type": "action", "action": [0] * 8}))  # still usable
        assert decode(next_frame(ws)).shape == (64, 64, 3)
        # Exactly the limit: the server closes on the last one, so no send can race its close (12 sends here
        # once failed under load: the close arrived before the 11th and the send raised).
        for _ in range(ServeConfig().max_errors):
            ws.send("garbage")
        code, reason = close_code(ws)
        assert code == protocol.CLOSE_MALFORMED and "malformed" in reason
    with connect(server.ws_url, max_size=None) as ws:  # a frame over the 64 KiB limit: closed by the server
        ws.recv(timeout=30)
        ws.send("z" * 100_000)
        assert close_code(ws)[0] == 1009
    with connect(f"{server.ws_url}?format=gif") as ws:
        assert close_code(ws)[0] == protocol.CLOSE_BAD_REQUEST
    assert server.health()["status"] == "ok"


def test_message_flood_is_closed(server):
    with connect(server.ws_url) as ws:
        hello_and_first_frame(ws)
        try:
            for _ in range(400):
                ws.send('{"type": "keys", "keys": []}')
        except ConnectionClosed as e:  # closed while still flooding
            assert e.rcvd.code == protocol.CLOSE_TOO_MANY_MESSAGES
        else:
            assert close_code(ws)[0] == protocol.CLOSE_TOO_MANY_MESSAGES


def test_token_and_max_players(guarded):
    for url in (guarded.ws_url, f"{guarded.ws_url}?token=wrong"):
        with connect(url) as ws:
            code, reason = close_code(ws)
            assert code == protocol.CLOSE_UNAUTHORIZED and "token" in reason
    with connect(f"{guarded.ws_url}?token=s3cret") as p1, connect(f"{guarded.ws_url}?token=s3cret") as p2:
        hello_and_first_frame(p1)
        hello_and_first_frame(p2)
        with connect(f"{guarded.ws_url}?token=s3cret") as p3:
            code, reason = close_code(p3)
            assert code == protocol.CLOSE_FULL and "full" in reason
        p1.send('{"type": "keys", "keys": []}')
        next_frame(p1)  # the players let in play on
    m = guarded.metrics()
    assert m['nfd_serve_connections_total{outcome="unauthorized"}'] == 2
    assert m['nfd_serve_connections_total{outcome="full"}'] == 1


# -- the scheduler: idle, slow and stuck clients (fake sockets and clock, real sessions) ---------------------------
def test_idle_player_is_closed_and_the_other_plays_on():
    """--idle-timeout, on the server's clock: a fake one here, so a loaded machine cannot close the active player
    too (a real 1.5 s timeout did, when its first frames took longer than that)."""
    from nfd_rt.serve.app import _send
    from nfd_rt.serve.server import ServeConfig, Server

    async def scenario():
        srv = Server(ServeConfig(threads=1, fps=50, idle_timeout=1.5, stats_interval=3600))
        now = [1000.0]
        srv.clock = lambda: now[0]
        active, idle = srv.join("png", ROOM), srv.join("png", ROOM)
        sockets = [BlockingSocket(reading=True), BlockingSocket(reading=True)]
        senders = [asyncio.ensure_future(_send(srv, ws, p)) for ws, p in zip(sockets, (active, idle))]
        await until(lambda: active.frame_index == 1 and idle.frame_index == 1)  # the reset frames
        for _ in range(4):  # 2 s on the server's clock: one player acts every 0.5 s, the other says nothing
            now[0] += 0.5
            await act_and_wait(srv, active)
        await until(lambda: sockets[1].closed is not None)
        await act_and_wait(srv, active)  # the active player plays on
        still_open = active.close_request is None and sockets[0].closed is None
        closes = srv.metrics.registry.get_sample_value("nfd_serve_closes_total", {"code": "4408"})
        for p in (active, idle):  # as the app does: left first, then the senders cancelled
            srv.leave(p)
            p.wake.set()
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await srv.stop()
        return sockets[1].closed, still_open, closes, active.frame_index

    closed, still_open, closes, frame_index = asyncio.run(scenario())
    assert closed == (protocol.CLOSE_IDLE, "idle for more than 1.5 s")
    assert still_open and frame_index == 6 and closes == 1


def test_slow_client_gets_the_newest_frame_and_a_stuck_one_is_closed():
    from nfd_rt.serve.app import _send
    from nfd_rt.serve.server import ServeConfig, Server

    async def scenario():
        srv = Server(ServeConfig(threads=1, fps=50, send_timeout=120, stats_interval=3600))
        p = srv.join("png", ROOM)
        ws = BlockingSocket()
        sender = asyncio.ensure_future(_send(srv, ws, p))
        await until(ws.waiting.is_set)  # the reset frame is being sent: the client has stopped reading
        for _ in range(7):  # seven frames made while the client reads nothing
            await act_and_wait(srv, p)
        dropped, newest = p.frames_dropped, p.outbox
        ws.release.set()  # the client reads again: it gets the newest frame, not a backlog
        await until(lambda: p.frames_sent == 2)
        await asyncio.sleep(0.1)  # (nothing more may come)
        frames = [x for x in ws.sent if isinstance(x, bytes)]
        sender.cancel()
        srv.leave(p)
        # A client that never reads at all is closed after --send-timeout.
        srv.cfg.send_timeout = 0.3
        q = srv.join("jpeg", ROOM)
        stuck = BlockingSocket()
        await asyncio.wait_for(_send(srv, stuck, q), 60)
        srv.leave(q)
        await srv.stop()
        return dropped, newest, frames, p, stuck.closed

    dropped, newest, frames, p, closed = asyncio.run(scenario())
    # The frame in flight when the client stopped reading, then only the newest of the seven: the six before it
    # were replaced (latest-frame-wins), not queued.
    assert dropped == 6 and p.frames_dropped == 6
    assert len(frames) == 2 and frames[1] == newest
    assert closed == (protocol.CLOSE_SLOW_CLIENT, "client did not read for 0.3 s")


# -- load and faults --------------------------------------------------------------------------------------------
def test_short_load_with_faults(bench):
    """A few players for a few seconds beside disconnecting, garbage-sending and never-reading clients."""
    r = bench.run([1, 3], seconds=4, faults=True, threads=1, solo_seconds=2, baseline_seconds=0.3)
    assert r["server_alive"]
    m = r["server_metrics"]
    assert m["nfd_serve_server_errors_total"] == 0
    for n, ph in r["phases"].items():
        assert ph["errors"] == [], ph["errors"]
        assert ph["fps_per_player_min"] > 0 and ph["latency_ms_p99"] >= ph["latency_ms_p50"] > 0
    f = r["phases"]["3"]["faults"]
    assert f["disconnects"] >= 3 and f["error_replies"] >= 10 and f["frames_between_garbage"] >= 2
    assert f["closes"].get("4400", 0) >= 1 and f["closes"].get("1009", 0) >= 1, f["closes"]
    assert f["never_reading_handshake"].startswith("HTTP/1.1 101") and f["never_reading_actions"] > 20
    assert "disconnect_errors" not in f and "garbage_errors" not in f, f
    assert r["runtime_alone_before"]["fps"] > 0 and r["ms_per_session_step_in_server"] > 0
    growth = r["phases"]["3"]["memory_growth_mib"]
    assert growth is None or growth < 40, r["phases"]["3"]["rss_mib"]


# -- CLI --------------------------------------------------------------------------------------------------------
def test_cli_rejects_bad_options_clearly(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "nfd_rt.cli", "serve", *args], capture_output=True, text=True,
                              timeout=60)

    r = run(str(tmp_path / "missing.nfd"))
    assert r.returncode == 1 and "missing.nfd not found" in r.stderr
    r = run("--fps", "0")
    assert r.returncode == 2 and "--fps: must be a finite number > 0" in r.stderr
    r = run("--fps", "1000")
    assert r.returncode == 1 and "fps must be in (0, 240]" in r.stderr
    assert "--max-players" in run("--help").stdout


def test_cli_checks_everything_before_listening(tmp_path):
    """Each of these started a server (a traceback in uvicorn's log, or /healthz ok and every player closed with
    1011, or a URL with the wrong port): now one line, a non-zero exit, and nothing listens."""
    from nfd_rt import _core

    text = tmp_path / "notes.nfd"
    text.write_text("not a model\n" * 20)
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [
        ([str(text)], 1, f"nfd-rt serve: error: {text}: not a .nfd (safetensors) file"),
        (["--keymap", str(tmp_path / "keys.json")], 1, f"nfd-rt serve: error: --keymap {tmp_path / 'keys.json'}: "
         "no such file"),
        (["--dtype", "float16"], 1, "nfd-rt serve: error: the CPU backend computes in float32 or bfloat16; dtype "
         "float16 needs device cuda"),
        (["--device", "gpu"], 1, "nfd-rt serve: error: device must be 'cpu' or 'cuda', got 'gpu'"),
        (["--port", str(busy.getsockname()[1])], 1, f"nfd-rt serve: error: cannot listen on 127.0.0.1:"
         f"{busy.getsockname()[1]}: "),
        (["--port", "99999"], 2, "argument --port: must be an integer in [1, 65535], got 99999"),
    ]
    if not _core.cuda_available():
        cases.append((["--device", "cuda"], 1, "nfd-rt serve: error: device cuda requested but CUDA is unavailable"))
    try:
        for args, rc, what in cases:
            r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "serve", *args], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == rc and what in r.stderr, (args, r.stderr)
            assert "Traceback" not in r.stderr and "Uvicorn running" not in r.stderr, (args, r.stderr)
            if rc == 1:
                assert len(r.stderr.splitlines()) == 1, (args, r.stderr)
    finally:
        busy.close()
