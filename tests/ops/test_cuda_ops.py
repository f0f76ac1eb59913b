"""The CUDA checks that need C++ (tests/cuda/test_ops_cuda.cu: the device layer, graph capture and replay, what
kernels do with a replayed FrameState, the GEMM engine choice), on a real GPU. Every op's numbers and contract
on CUDA are rows of the op table, tests/ops/test_ops.py.

Builds the CMake target `nfd_cuda_op_tests` in a temporary build tree (or uses $NFD_CUDA_OP_TESTS, a prebuilt
binary) and runs it; skipped with reason "no CUDA device" where no GPU is present.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cuda_device_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


@pytest.mark.cuda
def test_cuda_ops(tmp_path):
    if not _cuda_device_present():
        pytest.skip("no CUDA device")
    exe = os.environ.get("NFD_CUDA_OP_TESTS")
    if not exe:
        if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
            pytest.skip("no nvcc to build the CUDA op tests")
        arch = os.environ.get("NFD_RT_CUDA_ARCHITECTURES", "")  # empty: the GPU of this machine
        build = tmp_path / "build"
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DNFD_RT_CUDA=ON", "-DNFD_RT_PYTHON=OFF",
                        f"-DNFD_RT_CUDA_ARCHITECTURES={arch}", f"-DPython_EXECUTABLE={sys.executable}"], check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "nfd_cuda_op_tests", "-j", "4"], check=True)
        exe = str(build / "nfd_cuda_op_tests")
    r = subprocess.run([exe], capture_output=True, text=True)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " 0 failed" in r.stdout
