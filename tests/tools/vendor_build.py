"""The GPU run's vendor build, checked without a GPU (tests/tools/test_gpu_tools.py): prepare_carry.sh --flashinfer
from a clean virtual environment, then the carried cuDNN and FlashInfer headers (and cuBLAS's, which the GPU image
has beside PyTorch) configured and the objects that use them compiled (sm_90, FlashInfer's Hopper unit for sm_90a). Several minutes of compiling on 2 cores, so CI
starts it in the background before the tests, at the lowest priority (it takes the cores the tests leave idle):

    nice -n 19 python tests/tools/vendor_build.py --out DIR &     # .ci/run
    NFD_RT_PREBUILT_VENDOR=DIR pytest                             # the tests read DIR/carry.json, DIR/build.json

Without NFD_RT_PREBUILT_VENDOR the tests call make_carry and build_objects themselves.

At nice 19 beside tests that keep both cores busy, this process gets ~1.5% of a core: a CMake configure that takes
30 s alone can take over ten minutes of wall time. So the background run is patient (PATIENT_S per step, not the
foreground limits), and whatever stops it (a timeout, an exception) is written into the JSON the test reads: the
test then fails naming it, instead of finding an empty log.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_TOOLS = REPO / "tools" / "gpu"
# What pip prints when it cannot reach a package index (no network, DNS, proxy): a skip, not a failure.
UNREACHABLE = re.compile(r"NewConnectionError|Temporary failure in name resolution|Max retries exceeded|"
                         r"Network is unreachable|No route to host|ConnectTimeout|Read timed out|ProxyError")
# A step's limit in the niced background run: starved while the tests run, it must not time out on wall time alone
# (the waiting test's own limit, prebuilt(timeout=...), bounds a real hang).
PATIENT_S = 3600
# The objects compiled against the vendor headers: the engines and the ops that call them.
OBJECTS = [f"CMakeFiles/nfd_rt.dir/csrc/ops/{f}.o" for f in ("cudnn_library.cc", "cudnn_engines.cc", "attention_cuda.cu",
                                                             "conv2d_cuda.cu", "attention_cuda_flashinfer.cu",
                                                             "kernel_report.cc", "linear_cuda_cublaslt.cu",
                                                             "linear_cuda.cu")] + \
          ["CMakeFiles/nfd_flashinfer_sm90.dir/csrc/ops/attention_cuda_flashinfer_sm90.cu.o"]
# cuBLAS's headers for the cuBLASLt engine (ops/linear_cuda_cublaslt.cu and linear_prepare): the GPU image has them
# beside PyTorch, this machine nowhere, so the pip build leaves that engine out. From this wheel (444 MB; the 1 MB
# include folder is kept). Pinned: the version the build was checked with.
CUBLAS_WHEEL = "nvidia-cublas==13.10.0.20"


def make_carry(work: Path, timeout: float = 900) -> dict:
    """prepare_carry.sh --flashinfer in a fresh virtual environment with none of the packages. Returns
    {"python", "carry", "rc", "output", "unreachable"} (unreachable: what pip said, when the registry was)."""
    work.mkdir(parents=True, exist_ok=True)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    carry = work / "carry"
    env = {**os.environ, "PYTHON": py, "CARRY_DIR": str(carry), "PIP_DEFAULT_TIMEOUT": "20", "PIP_RETRIES": "1"}
    r = subprocess.run(["bash", str(GPU_TOOLS / "prepare_carry.sh"), "--flashinfer"], env=env, capture_output=True,
                       text=True, timeout=timeout)
    out = r.stdout + r.stderr
    hit = UNREACHABLE.search(out) if r.returncode != 0 else None
    return {"python": py, "carry": str(carry), "rc": r.returncode, "output": out[-4000:],
            "unreachable": hit.group(0) if hit else None}


def cublas_headers(work: Path, timeout: float) -> tuple[Path | None, str]:
    """CUBLAS_WHEEL's include folder under work (downloaded once): (folder, "") or (None, what pip said)."""
    include = work / "cublas" / "nvidia" / "cu13" / "include"
    if (include / "cublasLt.h").exists():
        return include, ""
    wheels = work / "cublas-wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(wheels), CUBLAS_WHEEL], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PIP_DEFAULT_TIMEOUT": "20", "PIP_RETRIES": "1"})
    if r.returncode != 0:
        return None, (r.stdout + r.stderr)[-3000:]
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(work / "cublas", [n for n in z.namelist() if n.startswith("nvidia/cu13/include/")])
    shutil.rmtree(wheels)
    return include, ""


def build_objects(carry: Path, work: Path, jobs: int = 2, timeout: float = 600) -> dict:
    """Configures CMake with the carry's cuDNN and FlashInfer headers (as tools/gpu/run.sh does) and compiles
    OBJECTS. Returns {"skip"} (a reason) when this machine lacks the tools or build requirements, else
    {"configure_rc", "configure_output", "build_rc", "build_output", "empty"} (empty: objects missing or empty)."""
    missing = [t for t in ("nvcc", "cmake", "ninja") if shutil.which(t) is None]
    if missing:
        return {"skip": f"needs {', '.join(missing)}"}
    for mod in ("nlohmann_json", "scipy_openblas32", "cutlass_library"):
        if importlib.util.find_spec(mod) is None:
            return {"skip": f"the build requirement {mod} is not installed here"}
    headers, flashinfer, build = work / "cudnn-headers", work / "flashinfer-data", work / "build"
    for archive, into in (("cudnn-headers.tgz", headers), ("flashinfer-data.tgz", flashinfer)):
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(carry / archive) as t:
            t.extractall(into, filter="data")
    include = ";".join(str(headers / d) for d in ("frontend/include", "cudnn", "nvrtc"))
    cublas, said = cublas_headers(work, timeout)
    if cublas is None:
        hit = UNREACHABLE.search(said)
        if hit:
            return {"skip": f"the package registry is unreachable: {hit.group(0)}"}
        return {"configure_rc": -1, "configure_output": f"pip download {CUBLAS_WHEEL} failed:\n{said}"}
    r = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja", "-DNFD_RT_CUDA=ON",
                        "-DNFD_RT_CUDA_ARCHITECTURES=90", "-DNFD_RT_CUDNN=ON", f"-DNFD_RT_CUDNN_INCLUDE={include}",
                        "-DNFD_RT_FLASHINFER=ON", f"-DNFD_RT_FLASHINFER_DIR={flashinfer}",
                        f"-DNFD_RT_CURAND_INCLUDE={flashinfer / 'curand' / 'include'}",
                        "-DNFD_RT_CUBLASLT=ON", f"-DNFD_RT_CUBLAS_INCLUDE={cublas}",
                        "-DNFD_RT_PYTHON=OFF", "-DNFD_RT_BUILD_TESTS=OFF",
                        f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=timeout)
    said = "\n".join(ln for ln in r.stdout.splitlines() if "nfd_rt:" in ln)  # what was found and built, in full
    result = {"configure_rc": r.returncode, "configure_output": said + "\n...\n" + r.stdout[-3000:] + r.stderr[-3000:]}
    if r.returncode != 0:
        return result
    r = subprocess.run(["ninja", "-C", str(build), f"-j{jobs}", *OBJECTS], capture_output=True, text=True,
                       timeout=4 * timeout)
    result.update(build_rc=r.returncode, build_output=r.stdout[-4000:] + r.stderr[-4000:],
                  empty=[o for o in OBJECTS if not (build / o).exists() or (build / o).stat().st_size == 0])
    return result


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # readers never see half a file


def prebuilt(name: str, timeout: float = 2400) -> dict | None:
    """With NFD_RT_PREBUILT_VENDOR=DIR: waits for DIR/name (carry.json or build.json) from the background run and
    returns it; None without the variable. Fails if the background run died without writing it, or stopped on an
    error (the JSON's "error": its traceback)."""
    where = os.environ.get("NFD_RT_PREBUILT_VENDOR")
    if not where:
        return None
    path, log, t0 = Path(where) / name, Path(where) / "log", time.monotonic()
    while not path.exists():
        done = Path(where) / "exit"
        if done.exists() or time.monotonic() - t0 > timeout:
            time.sleep(1)  # a dying process prints its last words after the exit mark
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            why = "ended" if done.exists() else f"still running after {timeout:.0f} s"
            raise AssertionError(f"the background vendor build ({where}) {why} without writing {name}:\n{tail}")
        time.sleep(2)
    r = json.loads(path.read_text())
    assert "error" not in r, f"the background vendor build ({where}) stopped on an error:\n{r['error']}"
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for carry.json, build.json and the work")
    p.add_argument("--jobs", type=int, default=2, help="ninja jobs (default 2)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    step = "carry.json"
    try:
        carry = make_carry(out / "carry-work", timeout=PATIENT_S)
        _write(out / "carry.json", carry)
        step = "build.json"
        if carry["rc"] == 0:
            _write(out / "build.json", build_objects(Path(carry["carry"]), out / "build-work", args.jobs,
                                                     timeout=PATIENT_S))
    except BaseException:
        _write(out / step, {"error": traceback.format_exc()})
        raise
    finally:
        (out / "exit").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
