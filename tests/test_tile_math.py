"""CPU test of the CUDA kernels' tile math (csrc/ops/attention_math.h, csrc/core/philox.h), no GPU needed."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tile_math_cpu(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "test_tile_math"
    subprocess.run([cxx, "-std=c++17", "-O2", f"-I{ROOT / 'csrc'}", str(ROOT / "tests/cpp/test_tile_math.cc"),
                    "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
