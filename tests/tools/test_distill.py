"""Few-step sampling: the students distilled from the demo model (tools/train/distill_demo.py) ship, load, step,
match the PyTorch reference, and `nfd-rt evaluate --steps` reproduces their figures; the coin-state measure and
running a file at another schedule (`export.with_schedule`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nfd_rt import cli, export
from nfd_rt.demo import MODEL_FOR_STEPS, MODEL_PATH, MODELS, game
from nfd_rt.demo.evaluate import coin_tiles, held_out_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def test_students_are_package_data():
    """The wheel takes the package folder minus what .gitignore ignores (scikit-build-core), and *.nfd is ignored:
    each shipped model needs its own exception there."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout (in an installed package the test above finds the files or fails)")
    for path in MODELS.values():  # the checkout's copies: MODELS may point into an installed package
        rel = os.path.join("python", "nfd_rt", "demo", os.path.basename(path))
        assert os.path.exists(os.path.join(ROOT, rel)), f"{rel} is missing from the checkout"
        r = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT)
        assert r.returncode == 1, f"{rel} is git-ignored, so it would not ship in the wheel"


@needs_core
@pytest.mark.parametrize("steps", [2, 1])
def test_students_step_and_cpp_matches_pytorch(steps):
    """Loading and stepping a student, and parity of the C++ CPU session with ReferenceSession on it."""
    pytest.importorskip("torch")
    import nfd_rt
    from nfd_rt.reference import ReferenceSession

    frames, actions = held_out_sequence(1, 14)
    with nfd_rt.Session(STUDENTS[steps], dtype="float32", seed=4) as s:
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
# error (px), PSNR (dB), coin-state agreement. The full table (100 x 32, benchmarks/steps.py) is in docs/demo.md.
SMALL_EVAL = {
    ("--steps", "1"): (6.86, 29.97, 0.727),
    ("--steps", "2"): (6.89, 29.15, 0.682),
    ("--model", "gridworld", "--steps", "1"): (11.72, 29.26, 0.841),
}


@needs_core
@pytest.mark.parametrize("choice", list(SMALL_EVAL), ids=lambda c: "_".join(c).replace("--", ""))
def test_cli_evaluate_steps_reproduces_figures(tmp_path, capsys, choice):
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", *choice, "--device", "cpu", "--dtype", "float32", "--sequences", "4",
                     "--length", "12", "--json", str(out)]) == 0
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


@needs_core
def test_cli_demo_steps_picks_the_student(tmp_path, capsys):
    pytest.importorskip("imageio")
    out = tmp_path / "demo.gif"
    assert cli.main(["demo", "--steps", "1", "--frames", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 1000
    assert "1 steps/frame" in capsys.readouterr().out


def test_serve_takes_shipped_models_by_name():
    from nfd_rt.serve import protocol
    from nfd_rt.serve.server import ServeConfig

    for name, path in MODELS.items():
        assert ServeConfig(model=name).resolved_model() == path
        assert protocol.make_world("auto", path, None, game.ACTION_DIM).name == "gridworld"
    assert ServeConfig().resolved_model() == MODEL_PATH


def test_cli_steps_without_a_shipped_model_is_a_clear_error(capsys):
    assert cli.main(["evaluate", "--steps", "3", "--sequences", "1"]) == 1
    err = capsys.readouterr().err
    assert "no shipped Gridworld model samples in 3 steps" in err and "--model gridworld --steps 3" in err


# -- the distillation script --------------------------------------------------------------------------------------

@needs_core
def test_distill_script_is_reproducible(tmp_path):
    """Same seed, same files; and each student comes out the same whether or not the other one trains (so the
    shipped pair is what one default run writes, whichever of them was rerun)."""
    pytest.importorskip("torch")
    runs = {"both": [], "only1": ["--students", "1"], "only2": ["--students", "2"]}
    for name, extra in runs.items():
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train", "distill_demo.py"), "--quick",
                        "--seed", "3", "-o", str(tmp_path / name), *extra], check=True, capture_output=True,
                       timeout=600)
    both = {n: (tmp_path / "both" / f"gridworld-{n}step.nfd").read_bytes() for n in (2, 1)}
    assert (tmp_path / "only1" / "gridworld-1step.nfd").read_bytes() == both[1]
    assert (tmp_path / "only2" / "gridworld-2step.nfd").read_bytes() == both[2]
    assert not (tmp_path / "only1" / "gridworld-2step.nfd").exists()
    log = json.loads((tmp_path / "both" / "gridworld.distill.json").read_text())
    assert log["seed"] == 3 and log["distill_seconds"] > 0 and set(log["students"]) == {"2", "1"}
    assert log["students"]["1"]["optimiser_steps"] == 3 and log["students"]["2"]["optimiser_steps"] == 2
    import nfd_rt

    for n in (2, 1):
        with nfd_rt.Session(str(tmp_path / "both" / f"gridworld-{n}step.nfd")) as s:
            assert s.config.num_steps == n
            s.reset(frames=game.GridWorld(0).render()[None])
            assert s.step(game.action_vector("up")).shape == (64, 64, 3)


@needs_core
def test_steps_table_script_smoke(tmp_path):
    """benchmarks/steps.py: every row of docs/demo.md's few-step table, from `nfd-rt evaluate` runs."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "steps.py"), "--sequences", "2", "--length",
                        "4", "--fps-frames", "3", "--fps-rounds", "1", "-o", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "steps.json").read_text())
    assert set(summary["rows"]) == {"teacher-4", "teacher-2", "teacher-1", "student-2", "student-1"}
    for name, row in summary["rows"].items():
        assert len(row["schedule"]) == int(name[-1])
        assert row["fps_interleaved"] > 0 and row["latent_fps_interleaved"] > 0
    assert summary["rows"]["teacher-1"]["model_file"] == "gridworld.nfd"
    assert summary["rows"]["student-1"]["model_file"] == "gridworld-1step.nfd"
    assert "| repeat the last frame (baseline) |" in r.stdout
