"""The `onnxruntime[<device>]` runner of benchmarks/fps.py: what a user would pick instead of nfd_rt.

The same .nfd weights are exported with `nfd_rt.export.to_onnx` (dit_pass.onnx + vae_decoder.onnx, opset 17,
batch fixed at 1)
and stepped by `nfd_rt.onnx.OnnxSession`, the host loop of the export's nfd_onnx.json, with ONNX Runtime's
CPU execution provider (device cpu; intra-op threads = the benchmark's --threads) or its CUDA execution
provider (device cuda, when onnxruntime-gpu sees a GPU; the KV cache then lives in CUDA memory through torch).
The export's time is recorded apart from the frames. Kept in its own module so fps.py only registers it.
"""

from __future__ import annotations

import shutil
import tempfile
import time


def onnxruntime_runner(nfd_path, cfg, actions, args, time_frames, summarize, timed_flops, log) -> dict:
    """Time OnnxSession.step over `actions` like every other runner; returns {label: result} ({} if unavailable)."""
    label = f"onnxruntime[{args.device}]"
    try:
        import onnxruntime as ort

        import nfd_rt
        from nfd_rt.onnx import OnnxSession
    except ImportError as e:
        log(f"onnxruntime not installed: {label} skipped ({e}; pip install 'nfd_rt[onnx]')")
        return {}
    providers = ["CPUExecutionProvider"]
    if args.device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return {label: {"error": f"onnxruntime {ort.__version__} has no CUDA execution provider "
                                     "(install onnxruntime-gpu)"}}
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    tmp = tempfile.mkdtemp(prefix="nfd_bench_onnx_")
    try:
        log(f"exporting ONNX for {label} ...")
        t0 = time.perf_counter()
        # Batch fixed at 1 (every shape static), as a user tuning for one world would export: ONNX Runtime then
        # folds the dynamic-batch shape arithmetic away (389 instead of 577 nodes a pass on tiny).
        nfd_rt.export.to_onnx(nfd_path, tmp, encoder=False, batch=1)
        export_s = time.perf_counter() - t0
        log(f"running {label} ...")
        with OnnxSession(tmp, seed=0, providers=providers, threads=args.threads) as s:
            if s.providers[0] != providers[0]:
                return {label: {"error": f"ONNX Runtime fell back to {s.providers}"}}
            s.reset()
            times = time_frames(s.step, actions, args.warmup, lambda: None, label, args.progress)
            r = summarize(times, timed_flops)
            r.update({"export_seconds": export_s, "export": "opset 17, batch 1 (static shapes), float32", "onnxruntime": ort.__version__, "providers": s.providers,
                      "kv_cache_on": s.cache_device})
        return {label: r}
    except Exception as e:  # noqa: BLE001 - report and go on with the other runners, as fps.py does
        log(f"  {label} failed: {e}")
        return {label: {"error": str(e)}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
