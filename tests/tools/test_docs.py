"""The documentation's commands, run as written: a snippet marked `<!-- test: NAME -->` in docs/ is executed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from nfd_testfiles import REPO, snippet


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_c_api_example_runs_as_documented(tmp_path):
    """docs/c-api.md's build-and-run lines, in a copy of examples/ (the repository root's layout)."""
    import nfd_rt

    try:
        nfd_rt.cmake_dir()
    except FileNotFoundError:
        pytest.skip("nfd_rt is not installed (pip install .): the example links the installed library")
    shutil.copytree(os.path.join(REPO, "examples"), tmp_path / "examples")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet("c-api.md", "c-example")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    frames = sorted(os.listdir(tmp_path / "out"))
    assert len(frames) == 16 and frames[0] == "frame_000.ppm"
    assert "FPS" in r.stdout
