"""The `nfd-rt` command line as a user runs it: a real process, real pipes."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfd_testfiles import MICRO, random_nfd

ROOT = Path(__file__).resolve().parents[2]


def nfd_rt_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfd_rt.cli", *args], capture_output=True, text=True, timeout=120,
                          **kw)


@pytest.mark.parametrize("argv, what", [
    (["demo", "--frames", "0"], "--frames: must be >= 1"),
    (["demo", "--frames", "-3"], "--frames: must be >= 1"),
    (["demo", "--scale", "0"], "--scale: must be >= 1"),
    (["demo", "--video-fps", "0"], "--video-fps: must be a finite number > 0"),
    (["evaluate", "--sequences", "0"], "--sequences: must be >= 1"),
    (["evaluate", "--steps", "0"], "--steps: must be >= 1"),
    (["play", "--fps", "nan"], "--fps: must be a finite number > 0"),
])
def test_bad_numbers_are_usage_errors(argv, what):
    """A usage error (exit 2) naming the option, not a ZeroDivisionError from deep inside."""
    r = nfd_rt_cli(*argv)
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_info_into_a_closed_pipe_is_quiet(tmp_path):
    """`nfd-rt info m.nfd | head -2`: no "Broken pipe" message, exit status 0."""
    path = tmp_path / "m.nfd"
    path.write_bytes(random_nfd(MICRO))
    script = f'set -o pipefail; "{sys.executable}" -m nfd_rt.cli info --tensors "{path}" | head -2'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stderr == "" and len(r.stdout.splitlines()) == 2


def test_info_and_errors(tmp_path):
    path = tmp_path / "m.nfd"
    path.write_bytes(random_nfd(MICRO))
    r = nfd_rt_cli("info", str(path))
    assert r.returncode == 0 and "micro" in r.stdout and "a CPU session needs" in r.stdout
    r = nfd_rt_cli("info", str(tmp_path / "missing.nfd"))
    assert r.returncode == 1 and "nfd-rt info: error:" in r.stderr and "Traceback" not in r.stderr


def test_version():
    version = re.search(r"project\(nfd_rt VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    r = nfd_rt_cli("--version")
    assert r.returncode == 0 and r.stdout == f"nfd-rt {version}\n", (r.stdout, r.stderr)


def test_python_dash_m_runs_the_command():
    """`python -m nfd_rt` is the same command, for an environment whose scripts folder is not on PATH."""
    r = subprocess.run([sys.executable, "-m", "nfd_rt", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("nfd-rt "), (r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "nfd_rt", "info", "no-such.nfd"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "no-such.nfd" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_info_json_is_json_alone():
    """`info --json` prints one JSON document, nothing before it (it printed four lines first)."""
    r = nfd_rt_cli("info", "gridworld", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["config"]["name"] == "tiny" and d["parameters"] > 10**6 and d["session_bytes"]["cpu_float32"] > 0
    assert d["file"].endswith("gridworld.nfd")


@pytest.mark.parametrize("name", ["gridworld", "gridworld-2step", "gridworld-1step"])
def test_info_takes_the_shipped_model_names(name):
    """The names `demo`, `serve` and `evaluate` take; `info` said "not found"."""
    r = nfd_rt_cli("info", name)
    assert r.returncode == 0 and f"{name}.nfd: .nfd format version" in r.stdout, r.stderr


def test_export_onnx_takes_the_shipped_model_names(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    r = nfd_rt_cli("export-onnx", "gridworld-1step", "-o", str(tmp_path / "onnx"), "--no-encoder")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "onnx" / "nfd_onnx.json").exists()
    r = nfd_rt_cli("export-onnx", "gridworld-9step", "-o", str(tmp_path / "x"))
    assert r.returncode == 1 and "gridworld-9step not found (shipped models: gridworld," in r.stderr, r.stderr


@pytest.mark.parametrize("argv, what", [
    (["demo", "--out", "/nonexistent/dir/x.mp4"], "argument --out: folder /nonexistent/dir does not exist"),
    (["demo", "--out", "x.avi"], "argument --out: the video file must end in .mp4 or .gif, got 'x.avi'"),
    (["demo", "--room", "-1"], "argument --room: must be an integer in [0, 2147483647], got -1"),
    (["play", "--room", "2147483648"], "argument --room: must be an integer in [0, 2147483647]"),
    (["demo", "--seed", "-5"], "argument --seed: must be an integer in [0, "),
    (["serve", "--port", "99999"], "argument --port: must be an integer in [1, 65535], got 99999"),
])
def test_bad_options_are_refused_before_the_run(argv, what):
    """Refused at once with the option named (`--out x.avi` was refused after the whole run; `--out` into a
    missing folder created it)."""
    r = nfd_rt_cli(*argv)
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "session:" not in r.stdout  # nothing ran
    assert not os.path.exists("/nonexistent")


def test_every_option_has_help_and_shows_its_default():
    from nfd_rt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing, defaults = [], 0
    for name, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if not a.help:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
        text = p.format_help()
        defaults += text.count("(default: ")
    assert not missing, f"options without help: {missing}"
    demo = sub.choices["demo"].format_help()
    assert "(default: 120)" in demo and "(default: nfd_demo.mp4)" in demo and "(default: None)" not in demo
    assert "(default: 8000)" in sub.choices["serve"].format_help() and defaults > 30


def wait_for_line(stream, prefix: str, timeout: float = 120) -> None:
    """Read `stream` until a line starts with `prefix` (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    for line in stream:
        if line.startswith(prefix):
            return
        assert time.monotonic() < deadline, f"no line starting with {prefix!r}"
    raise AssertionError(f"the process ended before a line starting with {prefix!r}")


def sigint_as_from_a_terminal():
    """In the child, before exec: SIGINT handled by default. A test run started in the background by a shell without
    job control (as CI scripts are) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_demo_writes_the_frames_so_far(tmp_path):
    """Ctrl-C: one line, exit 130 (128 + SIGINT), and the frames made so far as a video (it was a traceback)."""
    imageio = pytest.importorskip("imageio.v2")
    out = tmp_path / "x.gif"
    p = subprocess.Popen([sys.executable, "-m", "nfd_rt.cli", "demo", "--frames", "3000", "--device", "cpu",
                          "--scale", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_as_from_a_terminal)
    try:
        wait_for_line(p.stderr, "demo [")  # the progress bar: frames are being made
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        err = p.stderr.read()
    finally:
        p.kill()
    assert p.returncode == 130
    lines = [ln for ln in err.splitlines() if not ln.startswith("demo [")]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.fullmatch(r"nfd-rt demo: interrupted after (\d+) of 3000 frames; wrote (.*) \(left: .*\)", lines[0])
    assert m and m.group(2) == str(out), lines
    assert len(imageio.mimread(str(out))) == int(m.group(1)) + 1 >= 2  # the context frame + the frames made


def test_ctrl_c_during_evaluate_is_one_line():
    p = subprocess.Popen([sys.executable, "-m", "nfd_rt.cli", "evaluate", "--sequences", "1000", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_from_a_terminal)
    try:
        wait_for_line(p.stderr, "evaluate [")
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        err = p.stderr.read()
    finally:
        p.kill()
    assert p.returncode == 130
    lines = [ln for ln in err.splitlines() if not ln.startswith("evaluate [")]
    assert lines == ["nfd-rt evaluate: interrupted"], err


def test_play_without_a_display_is_an_error():
    """With no display SDL falls back to an invisible window: `play --max-frames 20` said "played 20 frames"."""
    pytest.importorskip("pygame", reason="pygame is not installed (pip install 'nfd_rt[play]')")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    r = nfd_rt_cli("play", "--max-frames", "20", "--device", "cpu", env=env)
    assert r.returncode == 1 and "played" not in r.stdout, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [r.stderr.splitlines()[0]] and "nfd-rt play: error: nfd-rt play needs a " \
        "display, but SDL found none" in r.stderr, r.stderr
