"""CPU tests of the CUDA kernels' tile math, no GPU needed: csrc/ops/attention_math.h and csrc/core/philox.h
(tests/cpp/test_tile_math.cc), and the tensor-core attention kernel emulated lane by lane through
csrc/ops/attention_mma.h (tests/cpp/test_attention_emulation.cc), and the index maps of the tensor-core
convolution (csrc/ops/conv2d_layout.h, tests/cpp/test_conv_layout.cc)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source", ["test_tile_math.cc", "test_attention_emulation.cc", "test_conv_layout.cc"])
def test_tile_math_cpu(tmp_path, source):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "test"
    subprocess.run([cxx, "-std=c++17", "-O2", f"-I{ROOT / 'csrc'}", str(ROOT / "tests/cpp" / source),
                    "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
