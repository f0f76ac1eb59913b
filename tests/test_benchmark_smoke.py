"""The benchmark runs end to end on `tiny` and writes valid JSON (speed is not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fps_benchmark_smoke(tmp_path):
    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fps.py"), "--config", "tiny", "--frames", "3",
                        "--warmup", "1", "--threads", "1", "--out", str(out), "--markdown"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    runners = result["runners"]
    assert set(runners) >= {"nfd_rt[cpu,float32]", "eager", "no-cache", "onnxruntime[cpu]"}
    for name in ("nfd_rt[cpu,float32]", "eager", "no-cache", "onnxruntime[cpu]"):
        assert runners[name]["fps"] > 0 and runners[name]["ms_p99"] >= runners[name]["ms_p50"] > 0
    assert result["config"]["name"] == "tiny" and result["environment"]["commit"]
    assert result["cost"]["flops_per_frame"] > 0
    assert "| nfd_rt[cpu,float32] |" in r.stdout
    # The CPU roofline: a measured GEMM peak, and each runner's fraction of it (of nominal FLOPs: nfd_rt's
    # Winograd and phase convolutions do fewer multiply-adds, so its effective fraction may pass 1).
    assert 0 < result["peak_fp32_gemm_tflops_measured"] < 100
    assert all(runners[name]["fraction_of_peak"] > 0 for name in ("nfd_rt[cpu,float32]", "eager"))
    assert "OpenBLAS" in result["environment"]["blas"]
    # The README's tables come from stored results.
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fps.py"), "--markdown-from", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "| nfd_rt[cpu,float32] |" in again.stdout and "Roofline peak" in again.stdout
