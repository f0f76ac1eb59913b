"""What every benchmark of nfd_rt records the same way: the environment of a run, and the top of its result.

Every result JSON under benchmarks/results/ starts with the same keys:
    "benchmark"       the script that wrote it (fps, ops, worlds, gym_vec, serve_load, soak, steps, snapshot,
                      bf16_quality)
    "schema_version"  the version of these common keys (1)
    "environment"     environment(device): date, host, CPU, Python, nfd_rt version and commit, BLAS, CPU kernels,
                      torch, the GPU and driver where there is one, and the load average when the run started
and then the benchmark's own settings and figures.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 1


def environment(device: str) -> dict:
    from nfd_rt._env import runtime_report, source_commit

    rt = runtime_report()  # the same facts as `nfd-rt env`
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": rt["cpu"],
        "python": platform.python_version(),
        "nfd_rt_version": rt["nfd_rt"],
        "cuda_runtime": rt["cuda"],
        "cuda_engines": rt["cuda_engines"],  # the vendor engines built in and whether their libraries loaded
        "blas": rt["blas"],
        "cpu_fp32_gemm": rt["cpu_fp32_gemm"],  # which engine ran the fp32 linears (oneDNN / OpenBLAS by block)
        "cpu_kernels": rt["cpu_kernels"],
        "cpu_bf16": rt["cpu_bf16"],  # what nfd_rt's CPU bf16 runs on (AMX / AVX512-BF16 through oneDNN), or why not
        "cpu_default_dtype": rt["cpu_default_dtype"],
    }
    if "OPENBLAS_CORETYPE" in rt:
        env["OPENBLAS_CORETYPE"] = rt["OPENBLAS_CORETYPE"]
    env.update(source_commit(HERE))
    try:
        import torch

        env["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
            env["cuda"] = torch.version.cuda
            env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
            env["sdpa_backends_enabled"] = {
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
                "math": torch.backends.cuda.math_sdp_enabled()}
    except ImportError:
        pass
    if device == "cuda":
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    try:
        env["load_average"] = os.getloadavg()[0]  # other work on the machine at the start
    except OSError:
        pass
    return env


def result_header(benchmark: str, device: str = "cpu") -> dict:
    """The common top of a result: {"benchmark", "schema_version", "environment"}."""
    return {"benchmark": benchmark, "schema_version": SCHEMA_VERSION, "environment": environment(device)}
