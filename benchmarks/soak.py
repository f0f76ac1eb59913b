#!/usr/bin/env python3
"""Long-run soak: step one session for many frames and record, per block of frames, the time per frame and the
process' resident memory. A runtime with a rolling KV cache must stay flat in both, however long it runs.

    python benchmarks/soak.py                       # 100,000 frames of the shipped tiny demo model, 1 thread
    python benchmarks/soak.py --frames 20000 --threads 2 --out /tmp/soak.json

Needs no PyTorch. Writes JSON under benchmarks/results/ (never over an existing file) with one row per block:
frames, mean/p50/p99 ms per frame, VmRSS and the CPU ops' scratch bytes at the end of the block; and a summary:
RSS growth from the first full block to the last, and the ratio of the last blocks' median frame time to the
first blocks'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run(model: str, frames: int, block: int = 1000, threads: int = 1, seed: int = 0, decode: bool = True,
        progress: bool = False) -> dict:
    """Steps `frames` frames (actions: a fixed random walk over the keys) and returns the per-block record."""
    import nfd_rt
    from nfd_rt import _core

    rows = []
    rng = np.random.default_rng(seed)
    with nfd_rt.Session(model, seed=seed, threads=threads) as s:
        cfg = s.config
        s.reset()
        acts = np.eye(cfg.action_dim, dtype=np.float32)
        step = s.step if decode else s.step_latent
        t_block: list[float] = []
        start = time.perf_counter()
        for i in range(frames):
            a = acts[rng.integers(cfg.action_dim)]
            t0 = time.perf_counter()
            step(a)
            t_block.append(time.perf_counter() - t0)
            if len(t_block) == block or i == frames - 1:
                t = np.asarray(t_block) * 1e3
                rows.append({"frames_done": i + 1, "ms_mean": float(t.mean()), "ms_p50": float(np.median(t)),
                             "ms_p99": float(np.percentile(t, 99)), "rss_bytes": rss_bytes(),
                             "scratch_bytes": int(_core.cpu_scratch_bytes())})
                t_block = []
                if progress:
                    r = rows[-1]
                    print(f"  {i + 1:>7}/{frames} frames  {r['ms_mean']:.2f} ms/frame  "
                          f"RSS {r['rss_bytes'] / 2**20:.1f} MiB  ({time.perf_counter() - start:.0f} s)",
                          file=sys.stderr, flush=True)
        name = cfg.name
    return {"model": os.path.basename(model), "config": name, "frames": frames, "block": block,
            "threads": threads, "decode": decode, "blocks": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """RSS growth from the first full block (the first one includes start-up) to the last, and the last 10
    blocks' median frame time against the first 10 (after the first)."""
    full = rows[1:] if len(rows) > 2 else rows
    k = max(1, min(10, len(full) // 2))
    first_ms = float(np.median([r["ms_p50"] for r in full[:k]]))
    last_ms = float(np.median([r["ms_p50"] for r in full[-k:]]))
    rss0, rss1 = full[0]["rss_bytes"], full[-1]["rss_bytes"]
    return {"rss_first_bytes": rss0, "rss_last_bytes": rss1, "rss_growth_bytes": rss1 - rss0,
            "rss_growth_fraction": (rss1 - rss0) / rss0, "rss_max_bytes": max(r["rss_bytes"] for r in full),
            "ms_p50_first_blocks": first_ms, "ms_p50_last_blocks": last_ms, "time_ratio_last_first": last_ms / first_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a .nfd file (default: the shipped Gridworld demo model, tiny)")
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--block", type=int, default=1000, help="frames per recorded block (default 1000)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: this VM's 2 threads are noisy)")
    p.add_argument("--no-decode", action="store_true", help="step_latent only (no VAE decode)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/soak_<config>_cpu_t<threads>_<date>.json)")
    args = p.parse_args(argv)
    if args.frames < 2 * args.block:
        p.error("--frames must be at least two blocks")
    from nfd_rt.demo import MODEL_PATH

    model = args.model or MODEL_PATH
    print(f"soak: {args.frames} frames of {os.path.basename(model)} on {args.threads} thread(s)", file=sys.stderr)
    result = run(model, args.frames, args.block, args.threads, decode=not args.no_decode, progress=True)
    sys.path.insert(0, str(HERE))
    from common import result_header  # benchmarks/common.py

    result = {**result_header("soak"), **result}
    out = Path(args.out) if args.out else HERE / "results" / (
        f"soak_{result['config']}_cpu_t{args.threads}_{result['environment']['date'][:10]}.json")
    if out.exists():
        print(f"soak: {out} exists; not overwriting it (pass --out)", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    s = result["summary"]
    print(f"RSS {s['rss_first_bytes'] / 2**20:.1f} -> {s['rss_last_bytes'] / 2**20:.1f} MiB "
          f"({100 * s['rss_growth_fraction']:+.2f}%), frame time last/first {s['time_ratio_last_first']:.3f}; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
