"""Few-step sampling: the students distilled from the demo model (tools/train/distill_demo.py) ship, load, step,
match the PyTorch reference, and `nfd-rt evaluate --steps` reproduces their figures; the coin-state measure and
running a file at another schedule (`export.with_schedule`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nfd_rt import cli, export
from nfd_rt.demo import MODEL_FOR_STEPS, MODEL_PATH, MODELS, game
from nfd_rt.demo.evaluate import coin_tiles, held_out_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_core = pytest.mark.skipif(
    __import__("importlib").util.find_spec("nfd_rt._core") is None, reason="nfd_rt._core is not built")
STUDENTS = {2: MODELS["gridworld-2step"], 1: MODELS["gridworld-1step"]}


# -- the coin-state measure -----------------------------------------------------------------------------------

def test_coin_tiles_read_the_game_state_from_a_frame():
    frames, actions = game.rollout(2, 120, "greedy")
    world = game.GridWorld(2)
    for i, frame in enumerate(frames):
        if i:
            world.step(actions[i])
        expected = np.zeros((game.GRID, game.GRID), bool)
        for cx, cy in world.coins:
            expected[cy // game.TILE, cx // game.TILE] = True
        assert np.array_equal(coin_tiles(frame), expected), f"frame {i}"
    assert len(world.coins) < game.NUM_COINS, "the greedy player collected a coin in this episode"
    faded = frames[0].copy()
    faded[coin_tiles(frames[0])[:, :, None].repeat(8, 0).repeat(8, 1).repeat(3, 2)] //= 3
    assert not coin_tiles(faded).any(), "a coin faded to a third of its colour is gone"


# -- another schedule for the same weights ----------------------------------------------------------------------

def test_uniform_schedule():
    assert export.uniform_schedule(4) == (1.0, 0.75, 0.5, 0.25)
    assert export.uniform_schedule(1) == (1.0,)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            export.uniform_schedule(bad)


def test_with_schedule_rewrites_only_the_schedule(tmp_path):
    same = export.with_schedule(MODEL_PATH, tmp_path / "same.nfd", (1.0, 0.75, 0.5, 0.25))
    with open(MODEL_PATH, "rb") as f:
        assert open(same, "rb").read() == f.read(), "the teacher's own schedule gives the same bytes"
    one = export.with_schedule(MODEL_PATH, tmp_path / "one.nfd", (1.0,))
    table, cfg = export.read_header(one)
    assert cfg.schedule == (1.0,) and table == export.read_header(MODEL_PATH)[0]
    with pytest.raises(ValueError, match="must start at 1.0"):
        export.with_schedule(MODEL_PATH, tmp_path / "bad.nfd", (0.5, 0.25))


# -- the shipped students ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [2, 1])
def test_students_ship_small_with_the_teachers_vae(steps):
    path = STUDENTS[steps]
    assert os.path.exists(path), f"the {steps}-step student is not shipped in the package"
    assert os.path.getsize(path) <= 10 * 2**20
    assert MODELS[MODEL_FOR_STEPS[steps]] == path
    table, cfg = export.read_header(path)
    _, teacher = export.read_header(MODEL_PATH)
    assert cfg.num_steps == steps and cfg == teacher.replace(schedule=cfg.schedule)
    safetensors = pytest.importorskip("safetensors.numpy")
    ours, theirs = safetensors.load_file(path), safetensors.load_file(MODEL_PATH)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours if k.startswith("vae."))
    assert not np.array_equal(ours["dit.final.linear.weight"], theirs["dit.final.linear.weight"]), "distilled"


@needs_core
@pytest.mark.parametrize("steps", [2, 1])
def test_students_step_and_cpp_matches_pytorch(steps):
    """Loading and stepping a student, and parity of the C++ CPU session with ReferenceSession on it."""
    pytest.importorskip("torch")
    import nfd_rt
    from nfd_rt.reference import ReferenceSession

    frames, actions = held_out_sequence(1, 14)
    with nfd_rt.Session(STUDENTS[steps], seed=4) as s:
        assert s.config.num_steps == steps
        s.reset(frames=frames[:2])
        ours = np.stack([s.step_latent(a) for a in actions[2:-1]])
        frame = s.step(actions[-1])
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and s.frame_index == 14
    ref = ReferenceSession(STUDENTS[steps], seed=4)
    ref.reset(frames=frames[:2])
    theirs = np.stack([ref.step_latent(a) for a in actions[2:-1]])
    assert np.abs(ours - theirs).max() <= 1e-4


# -- the command line -------------------------------------------------------------------------------------------

# `nfd-rt evaluate --sequences 4 --length 12` (C++ CPU, fp32, seed 0) when the students were shipped: position
# error (px), PSNR (dB), coin-state agreement. The full table (100 x 32) is in docs/demo.md.
SMALL_EVAL = {
    ("--steps", "1"): None,
    ("--steps", "2"): None,
    ("--model", "gridworld", "--steps", "1"): None,
}


@needs_core
@pytest.mark.parametrize("choice", list(SMALL_EVAL), ids=lambda c: "_".join(c).replace("--", ""))
def test_cli_evaluate_steps_reproduces_figures(tmp_path, capsys, choice):
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", *choice, "--device", "cpu", "--sequences", "4", "--length", "12",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    steps = int(choice[-1])
    assert r["steps_per_frame"] == steps and r["schedule"] == list(export.uniform_schedule(steps))
    assert r["model_file"] == os.path.basename(MODELS["gridworld"] if "--model" in choice else STUDENTS[steps])
    assert ("not trained or distilled for" in capsys.readouterr().out) == ("--model" in choice)
    pos, psnr, coins = SMALL_EVAL[choice]
    m = r["model"]
    assert m["position_error_px"] == pytest.approx(pos, abs=0.05)
    assert m["psnr_db"] == pytest.approx(psnr, abs=0.05)
    assert m["coin_state_agreement"] == pytest.approx(coins, abs=0.03)
    assert r["fps"] > 0


def test_cli_steps_without_a_shipped_model_is_a_clear_error(capsys):
    assert cli.main(["evaluate", "--steps", "3", "--sequences", "1"]) == 1
    err = capsys.readouterr().err
    assert "no shipped Gridworld model samples in 3 steps" in err and "--model gridworld --steps 3" in err


# -- the distillation script --------------------------------------------------------------------------------------

@needs_core
def test_distill_script_is_reproducible(tmp_path):
    pytest.importorskip("torch")
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train", "distill_demo.py"), "--quick",
                        "--seed", "3", "-o", str(out)], check=True, capture_output=True, timeout=600)
        outs.append([(out / f"gridworld-{n}step.nfd").read_bytes() for n in (2, 1)])
    assert outs[0] == outs[1], "same seed, same threads: same students"
    log = json.loads((tmp_path / "run0" / "gridworld.distill.json").read_text())
    assert log["seed"] == 3 and log["distill_seconds"] > 0 and set(log["students"]) == {"2", "1"}
    import nfd_rt

    for n in (2, 1):
        with nfd_rt.Session(str(tmp_path / "run0" / f"gridworld-{n}step.nfd")) as s:
            assert s.config.num_steps == n
            s.reset(frames=game.GridWorld(0).render()[None])
            assert s.step(game.action_vector("up")).shape == (64, 64, 3)
