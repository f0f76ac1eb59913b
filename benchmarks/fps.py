#!/usr/bin/env python3
"""Frames per second of nfd_rt against its baselines, all in one run on the same random weights.

    python benchmarks/fps.py --config tiny --device cpu --frames 50
    python benchmarks/fps.py --config nfd-310m --device cuda --steps 4 --frames 300

Runners (each steps the same action sequence after `--warmup` untimed frames):
  nfd_rt[<device>,<dtype>]   the C++ runtime (nfd_rt.Session), every dtype the device supports
  eager                      ReferenceSession: eager PyTorch with a KV cache (SDPA attention)
  compile                    the same under torch.compile(mode="max-autotune") (CUDA only; compile time apart)
  no-cache                   recomputes the whole visible context every pass (how Oasis-style runtimes work)
  onnxruntime[<device>]      the ONNX export (nfd_rt.export.to_onnx) run by ONNX Runtime (benchmarks/onnx_runner.py)
Reports frames/s, p50/p99/max ms per frame, peak memory, the FLOPs and bytes a frame needs
(docs/performance.md), achieved TFLOP/s, and the ratio of nfd_rt to each baseline. Writes JSON under
benchmarks/results/ (or --out) and, with --markdown, a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name, for the roofline fraction.
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                        "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
GPU_BANDWIDTH_TBS = {"H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "H100": 3.35, "H200": 4.8, "A100": 2.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Work per frame (docs/performance.md)


def frame_cost(cfg, bytes_per_value: int = 2, visible_frames: int | None = None) -> dict:
    """FLOPs and bytes of one frame: (steps) denoising passes + 1 cache-write pass + one VAE decode, for a frame
    that attends to `visible_frames` frames (default: a full cache, sinks + window + itself)."""
    D, N, L = cfg.hidden_size, cfg.tokens_per_frame, cfg.depth
    keys = (visible_frames or cfg.cache_frames + 1) * N
    per_layer = 2 * N * D * (3 * D + D + 2 * cfg.mlp_ratio * D) + 4 * N * keys * D + 2 * D * 6 * D
    dit_pass = L * per_layer + 2 * N * cfg.patch_dim * D * 2 + 2 * D * 2 * D
    passes = cfg.num_steps + 1
    # VAE decoder convolutions.
    v, h, w = cfg.vae, cfg.latent_height, cfg.latent_width
    ch = v.channels
    vae = 2 * cfg.latent_channels * ch[-1] * 9 * h * w
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for _ in range(v.num_res_blocks):
            vae += 2 * 9 * h * w * (cin * ch[i] + ch[i] * ch[i]) + (2 * h * w * cin * ch[i] if cin != ch[i] else 0)
            cin = ch[i]
        if i > 0:
            h, w = 2 * h, 2 * w
            vae += 2 * 9 * h * w * cin * cin
    vae += 2 * 9 * h * w * ch[0] * 3
    dit_params = L * (12 * D * D + 6 * D * D) + 2 * cfg.patch_dim * D
    kv_bytes = 2 * L * keys * D * bytes_per_value
    return {
        "flops_per_frame": passes * dit_pass + vae,
        "dit_flops_per_pass": dit_pass,
        "vae_flops": vae,
        "bytes_per_frame": passes * (dit_params * bytes_per_value + kv_bytes),
        "passes_per_frame": passes,
    }


# ---------------------------------------------------------------------------------------------------------------
# Runners


def time_frames(step, actions, warmup: int, sync, label: str, progress: bool) -> list[float]:
    for a in actions[:warmup]:
        step(a)
    sync()
    times = []
    timed = actions[warmup:]
    for n, a in enumerate(timed):
        t0 = time.perf_counter()
        step(a)
        sync()
        times.append(time.perf_counter() - t0)
        if progress and (n + 1) % max(1, len(timed) // 10) == 0:
            log(f"  {label}: {n + 1}/{len(timed)} frames, {1.0 / np.mean(times):.1f} FPS so far")
    return times


def flops_of_frames(cfg, first: int, count: int) -> list[int]:
    """FLOPs of frames first .. first + count - 1 of a rollout from reset: frame f sees min(f, cache) + 1 frames,
    so early frames (before the cache fills) cost less than frame_cost's full-cache figure."""
    return [frame_cost(cfg, 4, min(f, cfg.cache_frames) + 1)["flops_per_frame"] for f in range(first, first + count)]


def summarize(times: list[float], flops: list[int]) -> dict:
    """Timing statistics; TFLOP/s = the timed frames' FLOPs (flops_of_frames) / their total time."""
    t = np.asarray(times) * 1e3
    fps = 1e3 / t.mean()
    return {
        "frames": len(times),
        "fps": fps,
        "ms_mean": float(t.mean()),
        "ms_p50": float(np.percentile(t, 50)),
        "ms_p99": float(np.percentile(t, 99)),
        "ms_max": float(t.max()),
        "tflops": float(sum(flops)) / (t.sum() / 1e3) / 1e12,
    }


def no_cache_step_factory(model, cfg, device, dtype):
    """Recompute the whole visible context (sinks + window + current) for every pass of every frame."""
    import torch

    from nfd_rt import rng

    latents: list = []
    ctx_len = cfg.window + cfg.sink_frames

    @torch.no_grad()
    def step(action):
        i = len(latents)
        ctx = latents[-ctx_len:] if ctx_len else []
        a = torch.as_tensor(action, device=device, dtype=dtype)
        acts = a.expand(len(ctx) + 1, -1)[None]
        x = torch.from_numpy(rng.latent_noise(0, i, 0, (cfg.latent_channels, cfg.latent_height,
                                                         cfg.latent_width))).to(device, dtype)
        sched = list(cfg.schedule) + [0.0]
        for k in range(cfg.num_steps):
            seq = torch.stack(ctx + [x])[None]
            t = torch.full((1, len(ctx) + 1), cfg.context_noise, device=device, dtype=dtype)
            t[0, -1] = sched[k]
            v = model.velocity(seq, t, acts, frame_offset=max(0, i - len(ctx)))[0, -1]
            x = x + (sched[k + 1] - sched[k]) * v
        latents.append(x)
        model.decode(x[None])

    return step


def run_benchmark(args) -> dict:
    import nfd_rt

    cfg = nfd_rt.configs.get(args.config)
    sched = {1: (1.0,), 2: (1.0, 0.5), 4: (1.0, 0.75, 0.5, 0.25)}
    if args.steps not in sched:
        raise SystemExit(f"--steps must be one of {sorted(sched)}")
    cfg = cfg.replace(schedule=sched[args.steps])
    frames = args.warmup + args.frames
    actions = np.random.default_rng(0).standard_normal((frames, cfg.action_dim)).astype(np.float32)
    results: dict = {"runners": {}}

    torch = None
    model = None
    try:
        import torch  # noqa: F811

        from nfd_rt.reference import NFDModel, ReferenceSession

        torch.set_num_threads(args.threads)
        log(f"building random {cfg.name} weights ...")
        model = NFDModel(cfg, init_seed=0).eval()
    except ImportError:
        log("torch not installed: PyTorch baselines skipped (pip install 'nfd_rt[torch]')")

    tmp = tempfile.mkdtemp(prefix="nfd_bench_")
    path = os.path.join(tmp, f"{cfg.name}.nfd")
    if model is not None:
        nfd_rt.export.save(model, path)
    else:
        nfd_rt.export.save_random(cfg, path)

    cuda = args.device == "cuda"
    sync = (lambda: torch.cuda.synchronize()) if (cuda and torch is not None) else (lambda: None)
    results["cost"] = frame_cost(cfg, 2)  # a full-cache frame; TFLOP/s count each timed frame's own FLOPs
    timed_flops = flops_of_frames(cfg, args.warmup, args.frames)

    # nfd_rt sessions.
    dtypes = ["bfloat16", "float16", "float32"] if cuda else ["float32"]
    if args.dtype:
        dtypes = [args.dtype]
    for dtype in dtypes:
        label = f"nfd_rt[{args.device},{dtype}]"
        log(f"running {label} ...")
        try:
            with nfd_rt.Session(path, device=args.device, dtype=dtype, seed=0, threads=args.threads) as s:
                s.reset()
                times = time_frames(s.step, actions, args.warmup, lambda: None, label, args.progress)
                r = summarize(times, timed_flops)
                r["memory_bytes"] = s.memory_bytes()
                results["runners"][label] = r
                if args.scaling:
                    results["scaling"] = scaling_run(s, cfg, args)
        except Exception as e:  # noqa: BLE001 - report and go on with the other runners
            log(f"  {label} failed: {e}")
            results["runners"][label] = {"error": str(e)}

    # ONNX Runtime: the ONNX export stepped by nfd_rt.onnx.OnnxSession (benchmarks/onnx_runner.py).
    if model is not None and not args.skip_baselines:
        from onnx_runner import onnxruntime_runner

        results["runners"].update(onnxruntime_runner(path, cfg, actions, args, time_frames, summarize, timed_flops,
                                                     log))

    # PyTorch baselines.
    if model is not None and not args.skip_baselines:
        dev = torch.device(args.device)
        tdtype = "bfloat16" if cuda else "float32"
        ref = ReferenceSession(model, device=args.device, seed=0, dtype=tdtype)
        log("running eager (ReferenceSession, KV cache) ...")
        times = time_frames(ref.step, actions, args.warmup, sync, "eager", args.progress)
        results["runners"]["eager"] = summarize(times, timed_flops)
        if cuda and args.compile_mode != "none":
            log(f"running torch.compile(mode={args.compile_mode!r}) ...")
            try:
                t0 = time.perf_counter()
                ref_c = ReferenceSession(model, device=args.device, seed=0, dtype=tdtype)
                ref_c.model.dit.blocks = torch.nn.ModuleList(
                    torch.compile(b, mode=args.compile_mode, dynamic=True) for b in ref_c.model.dit.blocks)
                ref_c.model.vae.decoder = torch.compile(ref_c.model.vae.decoder, mode=args.compile_mode)
                ref_c.step(actions[0])
                sync()
                compile_s = time.perf_counter() - t0
                times = time_frames(ref_c.step, actions, args.warmup, sync, "compile", args.progress)
                results["runners"][f"compile[{args.compile_mode}]"] = summarize(
                    times, flops_of_frames(cfg, args.warmup + 1, args.frames)) | {
                    "compile_seconds": compile_s}
            except Exception as e:  # noqa: BLE001
                log(f"  torch.compile failed: {e}")
                results["runners"][f"compile[{args.compile_mode}]"] = {"error": str(e)}
        log("running no-cache (recompute the whole context) ...")
        m = model.to(dev, getattr(torch, tdtype))
        step = no_cache_step_factory(m, cfg, dev, getattr(torch, tdtype))
        n = min(len(actions), args.warmup + max(5, args.frames // 4))  # it is slow; fewer frames suffice
        times = time_frames(step, actions[:n], args.warmup, sync, "no-cache", args.progress)
        results["runners"]["no-cache"] = summarize(times, flops_of_frames(cfg, args.warmup, n - args.warmup))
        del ref, m
        gc.collect()

    # Ratios: the best nfd_rt runner against every baseline.
    ours = {k: v for k, v in results["runners"].items() if k.startswith("nfd_rt") and "fps" in v}
    if ours:
        best = max(ours, key=lambda k: ours[k]["fps"])
        results["best"] = best
        results["ratios"] = {f"{best} / {k}": ours[best]["fps"] / v["fps"]
                             for k, v in results["runners"].items() if not k.startswith("nfd_rt") and "fps" in v}
    results["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda and torch is not None and torch.cuda.is_available():
        results["peak_torch_device_bytes"] = torch.cuda.max_memory_allocated()
    results["config"] = cfg.to_dict()
    return results


def scaling_run(session, cfg, args) -> dict:
    """Per-frame time against frame index over a long rollout (the rolling cache keeps it flat)."""
    n = args.scaling_frames
    a = np.zeros(cfg.action_dim, np.float32)
    session.reset()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        session.step(a)
        times.append(time.perf_counter() - t0)
        if args.progress and (i + 1) % max(1, n // 20) == 0:
            log(f"  scaling: {i + 1}/{n} frames")
    t = np.asarray(times) * 1e3

    def window_ms(center):
        lo, hi = max(0, center - 50), min(n, center + 50)
        return float(np.median(t[lo:hi]))

    out = {"frames": n, "ms_at_100": window_ms(100), f"ms_at_{n}": window_ms(n - 50)}
    out["ratio_last_vs_100"] = out[f"ms_at_{n}"] / out["ms_at_100"]
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(t, lw=0.5)
            ax.set_xlabel("frame index")
            ax.set_ylabel("ms per frame")
            ax.set_title(f"{cfg.name} long rollout")
            png = (Path(args.out).parent if args.out else Path(args.out_dir)) / f"scaling_{cfg.name}_{args.device}.png"
            fig.savefig(png, dpi=120, bbox_inches="tight")
            out["plot"] = png.name  # beside the JSON
        except ImportError:
            log("matplotlib not installed: no scaling plot")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Environment and output


def environment(device: str) -> dict:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                       check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["commit"] = os.environ.get("NFD_RT_COMMIT", "unknown")  # a copy without .git (e.g. a GPU machine)
    import nfd_rt

    env["nfd_rt_version"] = nfd_rt.__version__
    try:
        import torch

        env["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:  # the BLAS build and the kernel set it picked (OPENBLAS_CORETYPE overrides the choice)
        from nfd_rt._native import core

        env["blas"] = core().blas_config()
        env["cpu_kernels"] = core().cpu_kernel_level()
        if os.environ.get("OPENBLAS_CORETYPE"):
            env["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    except (ImportError, AttributeError):
        pass
    if device == "cuda":
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return env


def peak_tflops(env: dict) -> float | None:
    gpu = env.get("gpu", "")
    for name, peak in GPU_BF16_PEAK_TFLOPS.items():
        if name in gpu:
            return peak
    return None


def default_threads() -> int:
    """What nfd_rt.Session(threads=0) uses: the physical cores."""
    try:
        from nfd_rt._native import core

        return core().default_threads()
    except ImportError:
        return max(1, (os.cpu_count() or 2) // 2)


def measure_cpu_gemm_peak(threads: int) -> float | None:
    """The CPU's roofline peak: TFLOP/s of a large fp32 GEMM (512x1024 @ 1024x1024) through nfd_rt's own linear
    op, i.e. OpenBLAS as nfd_rt calls it, at `threads` threads; best of 5."""
    try:
        from nfd_rt._native import core

        ops = core().ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 1024), dtype=np.float32)
    w = rng.standard_normal((1024, 1024), dtype=np.float32)
    ops.linear(x, w, threads=threads)  # warm-up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        ops.linear(x, w, threads=threads)
        best = min(best, time.perf_counter() - t0)
    return 2 * 512 * 1024 * 1024 / best / 1e12


def markdown(result: dict) -> str:
    env, rows = result["environment"], []
    rows.append(f"**{result['config']['name']}**, {result['steps']} steps, "
                f"{env.get('gpu') or env.get('cpu')} ({result['device']}, {result['threads']} "
                f"thread{'s' if result['threads'] != 1 else ''}), "
                f"commit `{env['commit'][:10]}`, {env['date'][:10]}\n")
    peak = result.get("peak_bf16_tflops") or result.get("peak_fp32_gemm_tflops_measured")
    if result.get("peak_bf16_tflops"):
        rows.append(f"Roofline peak: {peak:.0f} TFLOP/s (dense bf16 tensor cores of this GPU).\n")
    elif peak:
        rows.append(f"Roofline peak: {peak * 1e3:.0f} GFLOP/s (measured: a 512x1024x1024 fp32 GEMM through "
                    f"nfd_rt's OpenBLAS{', ' + blas_kernels(env) if blas_kernels(env) else ''}).\n")
    rows.append("| runner | FPS | p50 ms | p99 ms | max ms | TFLOP/s | of peak | speed-up of nfd_rt best |")
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    best = result.get("best")
    for name, r in result["runners"].items():
        if "fps" not in r:
            rows.append(f"| {name} | failed: {r.get('error', '?')[:60]} | | | | | | |")
            continue
        ratio = result["runners"][best]["fps"] / r["fps"] if best else float("nan")
        frac = f"{100 * r['fraction_of_peak']:.1f}%" if "fraction_of_peak" in r else "-"
        rows.append(f"| {name} | {r['fps']:.1f} | {r['ms_p50']:.2f} | {r['ms_p99']:.2f} | {r['ms_max']:.2f} | "
                    f"{r['tflops']:.3f} | {frac} | {ratio:.2f}x |")
    return "\n".join(rows) + "\n"


def blas_kernels(env: dict) -> str:
    """'Haswell kernels' from an OpenBLAS config string such as 'OpenBLAS 0.3.34 DYNAMIC_ARCH ... Haswell ...'."""
    words = env.get("blas", "").split()
    known = {"Haswell", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen", "Sandybridge", "Nehalem", "Prescott"}
    picked = [w for w in words if w in known]
    return f"{picked[0]} kernels" if picked else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="model config: tiny, nfd-130m, nfd-310m (default tiny)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on (default cpu)")
    p.add_argument("--dtype", help="only this nfd_rt dtype (default: every dtype the device supports)")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per frame: 1, 2 or 4 (default 4)")
    p.add_argument("--frames", type=int, default=50, help="timed frames per runner (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames before timing (default 5)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="CPU threads for nfd_rt and PyTorch alike (default: physical cores, as nfd_rt.Session)")
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode of the compiled baseline (default max-autotune; 'none' skips it)")
    p.add_argument("--skip-baselines", action="store_true", help="time nfd_rt only")
    p.add_argument("--scaling", action="store_true", help="also a long rollout: time per frame vs frame index")
    p.add_argument("--scaling-frames", type=int, default=10000, help="frames of the long rollout (default 10000)")
    p.add_argument("--plot", action="store_true", help="write a PNG of the long rollout (needs matplotlib)")
    p.add_argument("--out", help="JSON output path (default benchmarks/results/<config>_<device>_<date>.json)")
    p.add_argument("--out-dir", default=str(HERE / "results"), help="folder for the default output")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table of the results")
    p.add_argument("--markdown-from", metavar="JSON",
                   help="print the Markdown table of a stored result and exit (how the README's tables are made)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0

    result = {"device": args.device, "steps": args.steps, "threads": args.threads,
              "environment": environment(args.device)}
    result.update(run_benchmark(args))
    if args.device == "cuda":
        peak = peak_tflops(result["environment"])
        if peak:
            result["peak_bf16_tflops"] = peak
    else:
        peak = measure_cpu_gemm_peak(args.threads)
        if peak:
            result["peak_fp32_gemm_tflops_measured"] = peak
    if peak:
        for r in result["runners"].values():
            if "tflops" in r:
                r["fraction_of_peak"] = r["tflops"] / peak
    out = Path(args.out) if args.out else Path(args.out_dir) / (
        f"{result['config']['name']}_{args.device}_s{args.steps}_{result['environment']['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    log(f"wrote {out}")
    if args.markdown:
        print(markdown(result))
    else:
        for name, r in result["runners"].items():
            print(f"{name:28s} " + (f"{r['fps']:9.1f} FPS  p50 {r['ms_p50']:.2f} ms  p99 {r['ms_p99']:.2f} ms"
                                    if "fps" in r else f"failed: {r['error']}"))
        for k, v in result.get("ratios", {}).items():
            print(f"ratio {k}: {v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
