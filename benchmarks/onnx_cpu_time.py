#!/usr/bin/env python3
"""Process CPU time per frame, nfd_rt against ONNX Runtime, one thread each, interleaved frame by frame.

    python benchmarks/onnx_cpu_time.py --config tiny --warmup 15 --frames 100
    python benchmarks/onnx_cpu_time.py --config nfd-130m --full-cache --frames 2

CPU time of a single-threaded process is much less moved by other processes than wall time, and interleaving
the two runtimes exposes them to the same conditions, so this gives their ratio on a busy machine (fps.py's
wall-clock FPS is the figure to quote from a quiet one). Parts: the DiT (`step_latent`: every denoising pass
and the cache-write pass) and the VAE decode. --full-cache first writes sink + window random context latents
(`reset(latents=...)`), so the timed frames attend to a full cache. Needs torch (random weights, the export).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--warmup", type=int, default=0, help="untimed frames after the reset (default 0)")
    p.add_argument("--frames", type=int, default=20, help="timed frames (default 20)")
    p.add_argument("--full-cache", action="store_true", help="reset with sink + window context latents first")
    args = p.parse_args(argv)

    import nfd_rt
    from nfd_rt.onnx_runtime import OnnxSession
    from nfd_rt.reference import NFDModel

    cfg = nfd_rt.configs.get(args.config)
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((args.warmup + args.frames, cfg.action_dim)).astype(np.float32)
    ctx = rng.standard_normal((cfg.cache_frames if args.full_cache else 0, cfg.latent_channels,
                               cfg.latent_height, cfg.latent_width)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="nfd_cpu_time_") as d:  # the sessions hold what they need once open
        nfd_rt.export.save(NFDModel(cfg, init_seed=0), f"{d}/m.nfd")
        nfd_rt.export.to_onnx(f"{d}/m.nfd", f"{d}/onnx", encoder=False, batch=1)
        runners = {"nfd_rt": nfd_rt.Session(f"{d}/m.nfd", threads=1),
                   "onnxruntime": OnnxSession(f"{d}/onnx", threads=1, providers=["CPUExecutionProvider"])}
    for s in runners.values():
        s.reset(latents=ctx)
        for a in acts[:args.warmup]:
            s.step(a)
    times = {(k, part): [] for k in runners for part in ("dit", "decode")}
    for a in acts[args.warmup:]:
        for k, s in runners.items():
            t0 = time.process_time()
            z = s.step_latent(a)
            t1 = time.process_time()
            s.decode(z)
            t2 = time.process_time()
            times[(k, "dit")].append(t1 - t0)
            times[(k, "decode")].append(t2 - t1)
    cache = "full cache" if args.full_cache else f"frames {args.warmup}..{args.warmup + args.frames - 1}"
    print(f"{cfg.name}, {cache}: CPU ms per frame at 1 thread (mean over {args.frames} frames)")
    for part in ("dit", "decode"):
        ours, ort = (1e3 * float(np.mean(times[(k, part)])) for k in runners)
        print(f"  {part:6s}  nfd_rt {ours:10.2f}  onnxruntime {ort:10.2f}  nfd_rt faster by {ort / ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
