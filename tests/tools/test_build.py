"""What `pip install .` compiles: the CUDA backend only where a GPU asks for it, for that GPU's architecture."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DETECT = ROOT / "cmake" / "nfd_detect_gpu.cmake"

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def fake_nvidia_smi(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return exe


def detect(*defines: str) -> str:
    r = subprocess.run(["cmake", *defines, "-P", str(DETECT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip()  # message() without a mode writes to stderr


@needs_cmake
def test_gpu_detection(tmp_path):
    h100 = fake_nvidia_smi(tmp_path, 'echo "NVIDIA H100 80GB HBM3, 9.0"; echo "NVIDIA A100-SXM4-80GB, 8.0"; '
                           'echo "NVIDIA H100 80GB HBM3, 9.0"')
    assert detect(f"-DNFD_NVIDIA_SMI={h100}") == (
        "found=TRUE archs=90;80 what=NVIDIA H100 80GB HBM3 (sm_90), NVIDIA A100-SXM4-80GB (sm_80)")
    no_driver = fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed because it could not communicate with the '
                                'NVIDIA driver." >&2; exit 9')
    nothing = tmp_path / "no-proc"
    assert detect(f"-DNFD_NVIDIA_SMI={no_driver}", f"-DNFD_NVIDIA_PROC={nothing}").startswith(
        "found=FALSE archs= what=nvidia-smi found no GPU (NVIDIA-SMI has failed")
    assert detect("-DNFD_NVIDIA_SMI=", f"-DNFD_NVIDIA_PROC={nothing}") == (
        f"found=FALSE archs= what=no nvidia-smi and no GPU in {nothing}")
    (tmp_path / "proc" / "0000:3b:00.0").mkdir(parents=True)  # a driver without nvidia-smi (containers)
    assert detect("-DNFD_NVIDIA_SMI=", f"-DNFD_NVIDIA_PROC={tmp_path / 'proc'}") == (
        f"found=TRUE archs=native what=1 GPU(s) in {tmp_path / 'proc'}")


def configure(tmp_path: Path, *defines: str) -> str:
    """The configure step of the C library (no Python module, no tests): its `nfd_rt:` lines."""
    for mod in ("nlohmann_json", "scipy_openblas32"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the build requirement {mod} is not installed here (pip install {mod.replace('_', '-')})")
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DNFD_RT_PYTHON=OFF",
                        "-DNFD_RT_BUILD_TESTS=OFF", f"-DPython_EXECUTABLE={sys.executable}", *defines],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, NFD_RT_CUDA_ARCHITECTURES=""))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return "\n".join(line for line in r.stdout.splitlines() if "nfd_rt:" in line)


@needs_cmake
def test_no_gpu_no_cuda_backend(tmp_path):
    """AUTO on a machine without a GPU compiles no CUDA, even with nvcc installed (it compiled three
    architectures, minutes of a first install, for nothing), and says why."""
    log = configure(tmp_path, "-DNFD_RT_CUDA=AUTO", "-DNFD_NVIDIA_SMI=", f"-DNFD_NVIDIA_PROC={tmp_path / 'none'}")
    assert f"nfd_rt: CUDA backend OFF (no NVIDIA GPU here: no nvidia-smi and no GPU in {tmp_path / 'none'}; " \
           "NFD_RT_CUDA=ON compiles it anyway)" in log, log
    assert re.search(r"nfd_rt: compiling \d+ C\+\+ files", log) and "CUDA" not in log.split("compiling")[1], log


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="no nvcc: the CUDA backend cannot be configured")
def test_a_gpu_gets_its_architecture(tmp_path):
    if importlib.util.find_spec("cutlass_library") is None:
        pytest.skip("the build requirement nvidia-cutlass is not installed here")
    h100 = fake_nvidia_smi(tmp_path, 'echo "NVIDIA H100 80GB HBM3, 9.0"')
    log = configure(tmp_path, "-DNFD_RT_CUDA=AUTO", f"-DNFD_NVIDIA_SMI={h100}", "-DNFD_RT_CUBLASLT=OFF",
                    "-DCMAKE_CUDA_COMPILER=" + (shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"))
    assert "nfd_rt: CUDA backend ON for architectures 90 (this machine's GPU: NVIDIA H100 80GB HBM3 (sm_90))" in log
    assert "CUDA files for sm_90" in log, log
