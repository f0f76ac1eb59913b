"""What this installation runs on: the one place `nfd-rt env` and the benchmarks read it from."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_report() -> dict:
    """{nfd_rt, python, cpu, cuda, cuda_engines, cpu_kernels, blas, cpu_fp32_gemm, cpu_bf16, cpu_default_dtype, OPENBLAS_CORETYPE
    (when set), default_threads}."""
    from . import __version__
    from ._native import core

    c = core()
    if c.cuda_available():
        cuda = f"yes: {c.cuda_device_name()}"
    elif c.built_with_cuda():
        cuda = f"no: built with CUDA, but {c.cuda_unavailable_reason()}"
    else:
        cuda = "no: built without CUDA (install with nvcc on the PATH to build the CUDA backend)"
    bf16 = c.cpu_bf16()
    if bf16["ok"]:
        cpu_bf16 = f"yes: {bf16['isa']} through oneDNN {bf16['onednn']} (dtype 'auto' is bfloat16 on the CPU)"
    else:
        cpu_bf16 = f"no: {bf16['why']} (dtype 'auto' is float32 on the CPU)"
    # The engine of fp32 linears (csrc/ops/linear_cpu.cc: chosen per column block by its shape).
    gemm = os.environ.get("NFD_RT_CPU_GEMM") or "auto"
    if not bf16["onednn"]:
        fp32_gemm = "OpenBLAS (this build has no oneDNN)"
    elif gemm == "auto":
        fp32_gemm = f"oneDNN {bf16['onednn']} for the large blocks of a linear, OpenBLAS for the rest"
    else:
        fp32_gemm = f"{'oneDNN' if gemm == 'onednn' else 'OpenBLAS'} for every block (NFD_RT_CPU_GEMM={gemm})"
    # The vendor engines the CUDA backend was built with, and whether their libraries load here.
    if c.built_with_cuda():
        b = c.cuda_build_info()
        cuda_engines = "; ".join([f"cuBLASLt: {b['cublaslt_status']}", f"cuDNN: {b['cudnn_status']}",
                                  "FlashInfer: " + ("built in" if b["flashinfer"] else "not built")
                                  + (" (with its Hopper attention, sm_90)" if b.get("flashinfer_sm90") else "")])
    else:
        cuda_engines = "none (built without CUDA)"
    report = {
        "nfd_rt": __version__,
        "python": f"{platform.python_version()} on {platform.machine()}",
        "cpu": cpu_model(),
        "cuda": cuda,
        "cuda_engines": cuda_engines,
        "cpu_kernels": c.cpu_kernel_level(),
        "blas": c.blas_config(),
        "cpu_fp32_gemm": fp32_gemm,
        "cpu_bf16": cpu_bf16,
        "cpu_default_dtype": c.default_dtype("cpu"),
        "default_threads": c.default_threads(),
    }
    if os.environ.get("OPENBLAS_CORETYPE"):
        report["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    return report


def source_commit(where: str) -> dict:
    """{"commit": sha or "unknown"[, "commit_dirty": True]} of the checkout holding `where`. NFD_RT_COMMIT wins
    when set: tools/gpu/run.sh sets it, because a tree copied to a GPU machine may carry a stale .git."""
    if os.environ.get("NFD_RT_COMMIT"):
        return {"commit": os.environ["NFD_RT_COMMIT"]}
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout.strip()

        out = {"commit": git("rev-parse", "HEAD")}
        if git("status", "--porcelain", "--untracked-files=no"):
            out["commit_dirty"] = True
        return out
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown"}
