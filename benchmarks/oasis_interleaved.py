#!/usr/bin/env python3
"""nfd_rt against the Oasis PyTorch baselines with the timed frames interleaved: on a shared machine.

    python benchmarks/oasis_interleaved.py --config oasis-500m --threads 2 --rounds 4

fps.py times its runners one after the other; on a machine shared with other work, a change of load between
runners lands on one runner and not the others (docs/oasis.md, "Speed"). Here every runner is set up, pre-filled
to a full window and warmed up first (torch.compile's compilation is in its warm-up frame), then the timed frames
go round-robin, one frame of each runner per round: a change of load falls on all of them alike. Same runners
(fps.py's factories), same weights, same actions; per frame the wall time, the process's CPU seconds and the load
average. Ratios: nfd_rt's to each baseline's, of the mean and of the median wall time, and of the mean CPU seconds.
Writes JSON (benchmarks/common.py header) under --out-dir, never over an existing file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fps  # noqa: E402  (benchmarks/fps.py: the runners)
from common import result_header  # noqa: E402


def stats(wall: list[float], cpu: list[float]) -> dict:
    w = np.asarray(wall)
    return {"frames": len(wall), "s": [round(x, 3) for x in wall], "cpu_seconds": [round(x, 3) for x in cpu],
            "s_mean": float(w.mean()), "s_median": float(np.median(w)), "s_min": float(w.min()),
            "cpu_seconds_mean": float(np.mean(cpu)), "fps": float(1 / w.mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="oasis-500m", help="an Oasis config (default oasis-500m)")
    p.add_argument("--threads", type=int, default=fps.default_threads(), help="CPU threads of every runner")
    p.add_argument("--rounds", type=int, default=4, help="timed frames per runner, one per round (default 4)")
    p.add_argument("--runners", default="nfd_rt,oasis-compile-static,oasis-static",
                   help="fps.py runners (default nfd_rt,oasis-compile-static,oasis-static)")
    p.add_argument("--compile-mode", default=None, help="as fps.py (default: 'default' on the CPU)")
    p.add_argument("--compile-backend", default="inductor", help="as fps.py (aot_eager: tests)")
    p.add_argument("--out", help="JSON output path (refused if it exists)")
    p.add_argument("--out-dir", default=str(HERE / "results"), help="folder of the default output")
    args = p.parse_args(argv)

    import torch

    import nfd_rt
    from nfd_rt.reference import OasisModel

    cfg = nfd_rt.configs.get(args.config)
    if getattr(cfg, "architecture", "nfd") != "oasis":
        raise SystemExit(f"{args.config} is not an Oasis config")
    result = {**result_header("oasis_interleaved", "cpu"), "config": cfg.to_dict(), "threads": args.threads,
              "steps": cfg.num_steps, "device": "cpu", "dtype": "float32", "complete": False}
    date = result["environment"]["date"][:10]
    out = Path(args.out) if args.out else Path(args.out_dir) / f"{args.config}_interleaved_cpu_t{args.threads}_{date}.json"
    n = 2
    while out.exists() and not args.out:
        out = Path(args.out_dir) / f"{args.config}_interleaved_cpu_t{args.threads}_{date}_{n}.json"
        n += 1
    if out.exists():
        raise SystemExit(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)

    # What fps.py's factories read from its arguments.
    ns = argparse.Namespace(device="cpu", dtype="float32", torch_dtypes="float32", compile_dtypes=None,
                            threads=args.threads, compile_mode=args.compile_mode,
                            compile_backend=args.compile_backend, curve=False, curve_runners=None,
                            frames=args.rounds, warmup=None, progress=False)
    torch.set_num_threads(args.threads)
    fps.log(f"building random {cfg.name} weights ...")
    model = OasisModel(cfg, init_seed=0).eval()
    work = tempfile.mkdtemp(prefix="nfd_bench_")
    try:
        path = os.path.join(work, f"{cfg.name}.nfd")
        nfd_rt.export.save(model, path)
        bench = fps.Bench(cfg, ns, path, model)
        actions = np.random.default_rng(0).standard_normal((args.rounds + 4, cfg.action_dim)).astype(np.float32)
        runners = []
        for name in [r.strip() for r in args.runners.split(",") if r.strip()]:
            made = fps.RUNNERS[name].factory(bench)
            runners.extend(made if isinstance(made, list) else [made])
        entries: dict = {}
        for r in runners:  # pre-fill to a full window, then the untimed frames (compilation)
            fps.log(f"warming up {r.name} ...")
            r.reset()
            r.prefill()
            warm = []
            for k in range(r.prefill_warmup):
                t0 = time.perf_counter()
                r.step(actions[k])
                warm.append(round(time.perf_counter() - t0, 3))
            entries[r.name] = {"warmup_s": warm, **r.info}
        wall: dict = {r.name: [] for r in runners}
        cpu: dict = {r.name: [] for r in runners}
        for r in runners:
            if r.mark_timing:
                r.mark_timing()
        loads = [fps.load_average()]
        for i in range(args.rounds):
            for r in runners:
                c0, t0 = time.process_time(), time.perf_counter()
                r.step(actions[i + 2])
                wall[r.name].append(time.perf_counter() - t0)
                cpu[r.name].append(time.process_time() - c0)
            loads.append(fps.load_average())
            fps.log(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in wall.items()))
        for r in runners:
            entries[r.name].update(stats(wall[r.name], cpu[r.name]))
            if r.after_timing:
                entries[r.name].update(r.after_timing())
            r.close()
        result["runners"] = entries
        result["load_average_per_round"] = loads  # before the first round, then after each
        ours = next(k for k in entries if k.startswith("nfd_rt"))
        base = [k for k in entries if k != ours]
        result["best"] = ours
        result["strongest_baseline"] = min(base, key=lambda k: entries[k]["s_mean"]) if base else None
        result["ratios"] = {f"{ours} / {k}": {m: entries[k][m] / entries[ours][m]
                                              for m in ("s_mean", "s_median", "s_min", "cpu_seconds_mean")}
                            for k in base}
        result["complete"] = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        del model
        gc.collect()
    out.write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    fps.log(f"wrote {out}")
    for k, v in result["runners"].items():
        print(f"{k:24s} mean {v['s_mean']:.2f} s  median {v['s_median']:.2f} s  min {v['s_min']:.2f} s  "
              f"cpu {v['cpu_seconds_mean']:.2f} s")
    for k, v in result["ratios"].items():
        print(f"{k}: " + ", ".join(f"{m} {x:.2f}x" for m, x in v.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
