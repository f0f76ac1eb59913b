"""The `nfd-rt` command line as a user runs it: a real process, real pipes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nfd_testfiles import MICRO, random_nfd


def nfd_rt_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfd_rt.cli", *args], capture_output=True, text=True, timeout=120,
                          **kw)


@pytest.mark.parametrize("argv, what", [
    (["demo", "--frames", "0"], "--frames: must be >= 1"),
    (["demo", "--frames", "-3"], "--frames: must be >= 1"),
    (["demo", "--scale", "0"], "--scale: must be >= 1"),
    (["demo", "--video-fps", "0"], "--video-fps: must be a finite number > 0"),
    (["evaluate", "--sequences", "0"], "--sequences: must be >= 1"),
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
