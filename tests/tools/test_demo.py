"""The playable demo: Gridworld's rules, the shipped model (size, loads, parity, beats the baseline), the CLI,
the pygame loop (headless) and the training script (a seconds-long run, reproducible from its seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nfd_rt import cli
from nfd_rt.demo import MODEL_PATH, game
from nfd_rt.demo.evaluate import evaluate, held_out_sequence, position_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_core = pytest.mark.skipif(
    __import__("importlib").util.find_spec("nfd_rt._core") is None, reason="nfd_rt._core is not built")


# -- the game -------------------------------------------------------------------------------------------------

def test_game_is_deterministic():
    f1, a1 = game.rollout(5, 40, "greedy")
    f2, a2 = game.rollout(5, 40, "greedy")
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2)
    assert not np.array_equal(f1, game.rollout(6, 40, "greedy")[0])


def test_actions_pair_with_the_frame_they_produce():
    frames, actions = game.rollout(11, 30, "random")
    assert frames.shape == (30, 64, 64, 3) and frames.dtype == np.uint8
    assert actions.shape == (30, game.ACTION_DIM) and not actions[0].any()
    world = game.GridWorld(11)
    assert np.array_equal(world.render(), frames[0])
    for i in range(1, 30):
        assert np.array_equal(world.step(actions[i]), frames[i])


def test_keys_move_the_agent_and_walls_stop_it():
    world = game.GridWorld(3)
    for key, (dx, dy) in {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}.items():
        before = world.agent.copy()
        world.step(game.action_vector(key))
        moved = world.agent - before
        assert moved[0] * dx >= 0 and moved[1] * dy >= 0 and np.abs(moved).sum() <= game.SPEED
    # Holding one key long enough always ends flush against a wall, never inside one.
    for key in ("right", "down", "left", "up"):
        for _ in range(20):
            world.step(game.action_vector(key))
        assert not world._blocked(*world.agent)
        stuck = world.agent.copy()
        world.step(game.action_vector(key))
        assert np.array_equal(stuck, world.agent), f"agent moved through a wall going {key}"


def test_agent_never_overlaps_walls_and_coins_get_collected():
    frames, _ = game.rollout(2, 200, "greedy")
    world = game.GridWorld(2)
    wall_pixels = np.kron(world.walls, np.ones((game.TILE, game.TILE), bool))
    coins_seen = []
    for f in frames:
        red = np.abs(f.astype(int) - game.AGENT_RGB).max(-1) == 0
        assert red.sum() == game.AGENT**2 and not (red & wall_pixels).any()
        coins_seen.append((np.abs(f.astype(int) - game.COIN_RGB).max(-1) == 0).sum() // game.COIN**2)
    assert coins_seen[0] == game.NUM_COINS and coins_seen[-1] < coins_seen[0], "the greedy player collects coins"
    assert all(b <= a for a, b in zip(coins_seen, coins_seen[1:])), "coins never come back"


def test_agent_position_by_colour():
    world = game.GridWorld(9)
    pos = game.agent_position(world.render())
    assert np.allclose(pos, world.agent + game.AGENT / 2)
    assert game.agent_position(np.zeros((64, 64, 3), np.uint8)) is None
    assert position_error(np.zeros((64, 64, 3), np.uint8), world.render()) == (32.0, False)


def test_bad_actions_are_rejected():
    with pytest.raises(ValueError, match="unknown key"):
        game.action_vector("jump")
    with pytest.raises(ValueError, match="finite"):
        game.GridWorld(0).step(np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="policy"):
        game.rollout(0, 4, "clever")


# -- the shipped model ----------------------------------------------------------------------------------------

def test_shipped_model_is_small_and_valid():
    assert os.path.exists(MODEL_PATH), "the demo model is not shipped in the package"
    assert os.path.getsize(MODEL_PATH) <= 20 * 2**20
    from nfd_rt.export import read_header

    tensors, cfg = read_header(MODEL_PATH)
    assert cfg.name == "tiny" and cfg.frame_height == game.SIZE and cfg.action_dim == game.ACTION_DIM


@needs_core
def test_shipped_model_beats_repeat_last_frame():
    import nfd_rt

    with nfd_rt.Session(MODEL_PATH, seed=0) as s:
        r = evaluate(s, sequences=6, length=24)
    model, baseline = r["model"]["position_error_px"], r["repeat_last_frame"]["position_error_px"]
    # Measured when the model was shipped: found 0.86, 5.9 px vs 15.5 px, PSNR 31.3 vs 23.6 dB.
    assert r["agent_found_fraction"] > 0.75
    assert model < 0.6 * baseline, f"model {model:.2f} px vs repeat-last-frame {baseline:.2f} px"
    assert r["model"]["psnr_db"] > r["repeat_last_frame"]["psnr_db"]


@needs_core
def test_shipped_model_cpp_matches_pytorch():
    """Parity on trained weights (not only random ones): the C++ CPU session against ReferenceSession."""
    pytest.importorskip("torch")
    import nfd_rt
    from nfd_rt.reference import ReferenceSession

    frames, actions = held_out_sequence(1, 12)
    with nfd_rt.Session(MODEL_PATH, dtype="float32", seed=4) as s:
        s.reset(frames=frames[:2])
        ours = np.stack([s.step_latent(a) for a in actions[2:]])
    ref = ReferenceSession(MODEL_PATH, seed=4)
    ref.reset(frames=frames[:2])
    theirs = np.stack([ref.step_latent(a) for a in actions[2:]])
    assert np.abs(ours - theirs).max() <= 1e-4


@needs_core
def test_shipped_model_cpp_bf16_is_close_to_pytorch():
    """The CPU's bf16 path on trained weights, against the fp32 reference: bf16 activations and products (fp32
    sums, softmax and norms) over 10 frames through the cache stay within 2% (rel. L2) of the reference latents;
    measured 0.6%, max |diff| 0.045 of values up to 6."""
    pytest.importorskip("torch")
    import nfd_rt
    from nfd_rt import _core
    from nfd_rt.reference import ReferenceSession

    if not _core.cpu_bf16()["ok"]:
        pytest.skip(f"no bf16 on this CPU: {_core.cpu_bf16()['why']}")
    frames, actions = held_out_sequence(1, 12)
    with nfd_rt.Session(MODEL_PATH, dtype="bfloat16", seed=4) as s:
        s.reset(frames=frames[:2])
        ours = np.stack([s.step_latent(a) for a in actions[2:]])
    ref = ReferenceSession(MODEL_PATH, seed=4)
    ref.reset(frames=frames[:2])
    theirs = np.stack([ref.step_latent(a) for a in actions[2:]])
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 2e-2
    assert np.abs(ours - theirs).max() <= 0.15


# -- command line, window, training ---------------------------------------------------------------------------

@needs_core
@pytest.mark.parametrize("ext", ["gif", "mp4"])
def test_cli_demo_writes_a_video(tmp_path, capsys, ext):
    pytest.importorskip("imageio")
    out = tmp_path / f"demo.{ext}"
    assert cli.main(["demo", "--frames", "6", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 1000
    if ext == "gif":
        import imageio.v2 as imageio

        frames = imageio.mimread(str(out))
        size = frames[0].shape[1::-1]
    else:
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(out))
        size = tuple(next(reader)["size"])
        frames = list(reader)
    assert len(frames) == 7 and size == (256 * 2 + 16, 256)
    assert "FPS" in capsys.readouterr().out


@needs_core
def test_cli_evaluate_json(tmp_path):
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--sequences", "2", "--length", "6", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["sequences"] == 2 and len(r["model"]["position_error_curve"]) == 5


def test_cli_demo_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tmp_path / "nope.nfd")]) == 1
    assert "nope.nfd not found" in capsys.readouterr().err


@needs_core
def test_play_loop_runs_headless(monkeypatch):
    pytest.importorskip("pygame", reason="pygame is not installed (pip install 'nfd_rt[play]')")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    import nfd_rt
    from nfd_rt.demo.play import play

    with nfd_rt.Session(MODEL_PATH) as s:
        result = play(s, max_frames=3, fps=1000)
        assert result["frames"] == 3 and s.frame_index == 4  # 1 context frame + 3 generated
        with pytest.raises(RuntimeError, match="needs a display"):  # no window: an error, not an endless loop
            play(s)


@pytest.mark.slow
@needs_core
def test_training_script_is_reproducible(tmp_path):
    pytest.importorskip("torch")
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}.nfd"
        # Every stage, a few steps each: reproducibility does not need --quick's 20 + 10 steps (4 minutes here).
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train", "train_demo.py"), "--vae-steps", "3",
                        "--dit-steps", "2", "--episodes", "4", "--episode-length", "24", "--batch", "8", "--seed", "3",
                        "-o", str(out)], check=True, capture_output=True, timeout=600)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1], "same seed, same threads: same model file"
    log = json.loads((tmp_path / "run0.train.json").read_text())
    assert log["seed"] == 3 and log["dit_seconds"] > 0
    import nfd_rt

    with nfd_rt.Session(str(tmp_path / "run0.nfd")) as s:
        s.reset(frames=game.GridWorld(0).render()[None])
        assert s.step(game.action_vector("up")).shape == (64, 64, 3)
