#!/usr/bin/env python3
"""Many worlds at once: batched steps and speculative sampling against plain stepping, in one run.

    python benchmarks/worlds.py                         # the shipped tiny demo model, CPU, 1 thread
    python benchmarks/worlds.py --batch-sizes 1,2,4,8,16 --repeat 0.5,0.8,0.95 --threads 2

Batch: n sessions of one nfd_rt.Model at a full cache, stepped by nfd_rt.step_batch: aggregate frames/s (all
sessions) and per-session latency (one batched step) against one session alone.

Speculation, exact mode: a player who calls at a fixed frame interval (longer than a frame's compute) with actions
that repeat with probability p (else a different key), and also the demo's scripted player (walking to the coins):
median and p99 call latency of a session with speculate=k against plain stepping, same actions and seed. Parallel
mode: frames/s with no pacing at each p (frames denoised k at a time), against plain stepping.

Needs no PyTorch. `fps.py --batch-sizes ... --repeat ...` runs the same functions into its JSON.
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
sys.path.insert(0, str(HERE))
from common import result_header  # noqa: E402  (benchmarks/common.py)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def warm(sessions, model_cfg, step) -> None:
    """Steps every session sinks + window + 1 frames, so the timed frames see a full cache."""
    for i in range(model_cfg.sink_frames + model_cfg.window + 1):
        step(i)


def batch_benchmark(path: str, sizes: list[int], frames: int = 50, threads: int = 1, device: str = "cpu",
                    dtype: str = "float32") -> dict:
    import nfd_rt

    m = nfd_rt.Model(path, device=device, dtype=dtype, threads=threads)
    cfg = m.config
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        sessions = [m.session(seed=i) for i in range(n)]
        acts = np.eye(cfg.action_dim, dtype=np.float32)[rng.integers(0, cfg.action_dim, (frames + 64, n))]
        step = (lambda i: nfd_rt.step_batch(sessions, acts[i])) if n > 1 else (lambda i: sessions[0].step(acts[i, 0]))
        warm(sessions, cfg, step)
        times = []
        for i in range(frames):
            t0 = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - t0)
        t = np.asarray(times)
        rows.append({"sessions": n, "aggregate_fps": n * len(t) / t.sum(), "per_session_fps": len(t) / t.sum(),
                     "ms_p50": float(np.median(t) * 1e3), "ms_p99": float(np.percentile(t, 99) * 1e3),
                     "session_bytes": sessions[0].memory_bytes()})
        log(f"  batch {n:>2}: {rows[-1]['aggregate_fps']:.1f} frames/s in all, {rows[-1]['ms_p50']:.2f} ms a step")
        for s in sessions:
            s.close()
    one = rows[0]["aggregate_fps"] if rows and rows[0]["sessions"] == 1 else None
    for r in rows:
        r["vs_one_session"] = r["aggregate_fps"] / one if one else None
    return {"weights_bytes": m.memory_bytes(), "frames": frames, "threads": threads, "rows": rows}


def repeat_actions(n: int, p: float, action_dim: int, seed: int = 0) -> np.ndarray:
    """Keys (one-hot) that repeat the previous one with probability p, else switch to a different key."""
    rng = np.random.default_rng(seed)
    keys = [int(rng.integers(action_dim))]
    for _ in range(n - 1):
        keys.append(keys[-1] if rng.random() < p else int((keys[-1] + 1 + rng.integers(action_dim - 1)) % action_dim))
    return np.eye(action_dim, dtype=np.float32)[keys]


def scripted_player_actions(n: int, room: int = 13) -> np.ndarray:
    from nfd_rt.demo import game

    _, actions = game.rollout(room, n, "greedy", room + 1)
    return actions.astype(np.float32)


def paced_latencies(session, actions: np.ndarray, interval: float) -> np.ndarray:
    """Calls session.step at a fixed interval (a player's frame clock); returns each call's latency."""
    lat = []
    next_call = time.perf_counter()
    for a in actions:
        now = time.perf_counter()
        if now < next_call:
            time.sleep(next_call - now)
        t0 = time.perf_counter()
        session.step(a)
        lat.append(time.perf_counter() - t0)
        next_call = t0 + interval
    return np.asarray(lat)


def speculation_benchmark(path: str, repeats: list[float], k: int = 4, frames: int = 200, threads: int = 1,
                          device: str = "cpu", dtype: str = "float32", interval_factor: float = 2.0,
                          scripted: bool = True) -> dict:
    import nfd_rt

    m = nfd_rt.Model(path, device=device, dtype=dtype, threads=threads)
    cfg = m.config
    # A frame's compute at a full cache sets the player's clock: interval = factor x its median.
    probe = m.session(seed=0)
    warm([probe], cfg, lambda i: probe.step(np.eye(cfg.action_dim, dtype=np.float32)[i % cfg.action_dim]))
    t = []
    for i in range(30):
        t0 = time.perf_counter()
        probe.step(np.eye(cfg.action_dim, dtype=np.float32)[i % cfg.action_dim])
        t.append(time.perf_counter() - t0)
    frame_s = float(np.median(t))
    interval = interval_factor * frame_s
    probe.close()
    cases = [(f"repeat p={p}", repeat_actions(frames, p, cfg.action_dim, seed=int(p * 100))) for p in repeats]
    if scripted:
        try:
            cases.append(("demo scripted player", scripted_player_actions(frames)))
        except Exception as e:  # noqa: BLE001 - a model that is not the Gridworld demo's
            log(f"  (no scripted-player case: {e})")
    exact, parallel = [], []
    for name, actions in cases:
        repeat_rate = float(np.mean([np.array_equal(a, b) for a, b in zip(actions[1:], actions[:-1])]))
        row = {"case": name, "actions_repeated": repeat_rate}
        for label, kw in (("plain", {}), ("exact", {"speculate": k})):
            s = m.session(seed=1, **kw)
            warm([s], cfg, lambda i: s.step(actions[0]))
            lat = paced_latencies(s, actions, interval)
            row[label] = {"ms_p50": float(np.median(lat) * 1e3), "ms_p99": float(np.percentile(lat, 99) * 1e3),
                          "ms_mean": float(lat.mean() * 1e3)}
            if kw:
                row[label]["stats"] = s.speculation_stats()
            s.close()
        row["p50_ratio_exact_vs_plain"] = row["exact"]["ms_p50"] / row["plain"]["ms_p50"]
        row["mean_ratio_exact_vs_plain"] = row["exact"]["ms_mean"] / row["plain"]["ms_mean"]
        exact.append(row)
        log(f"  exact k={k}, {name}: p50 {row['exact']['ms_p50']:.2f} ms vs plain {row['plain']['ms_p50']:.2f} ms "
            f"({row['p50_ratio_exact_vs_plain']:.2f}x), served {row['exact']['stats']['served']}")
        prow = {"case": name, "actions_repeated": repeat_rate}
        for label, kw in (("plain", {}), ("parallel", {"speculate": k, "speculate_mode": "parallel"})):
            s = m.session(seed=1, **kw)
            warm([s], cfg, lambda i: s.step(actions[0]))
            t0 = time.perf_counter()
            for a in actions:
                s.step(a)
            prow[label] = {"fps": len(actions) / (time.perf_counter() - t0)}
            if kw:
                prow[label]["stats"] = s.speculation_stats()
            s.close()
        prow["fps_ratio_parallel_vs_plain"] = prow["parallel"]["fps"] / prow["plain"]["fps"]
        parallel.append(prow)
        log(f"  parallel k={k}, {name}: {prow['parallel']['fps']:.1f} vs plain {prow['plain']['fps']:.1f} frames/s "
            f"({prow['fps_ratio_parallel_vs_plain']:.2f}x)")
    return {"k": k, "frames": frames, "threads": threads, "frame_ms": frame_s * 1e3, "interval_ms": interval * 1e3,
            "exact": exact, "parallel": parallel}


def markdown(result: dict) -> str:
    out = []
    if "batch" in result:
        b = result["batch"]
        out += [f"Batched steps ({b['threads']} thread(s), {b['frames']} timed steps at a full cache):", "",
                "| sessions | frames/s (all) | vs one session | ms per batched step (p50) |",
                "| ---: | ---: | ---: | ---: |"]
        for r in b["rows"]:
            out.append(f"| {r['sessions']} | {r['aggregate_fps']:.1f} | {r['vs_one_session']:.2f}x | {r['ms_p50']:.2f} |")
        out.append("")
    if "speculation" in result:
        s = result["speculation"]
        out += [f"Exact speculation, k={s['k']}, the player calling every {s['interval_ms']:.1f} ms (a frame's compute: "
                f"{s['frame_ms']:.1f} ms):", "",
                "| actions | repeated | plain p50 ms | exact p50 ms | ratio | exact p99 ms | served / discarded |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in s["exact"]:
            st = r["exact"]["stats"]
            out.append(f"| {r['case']} | {100 * r['actions_repeated']:.0f}% | {r['plain']['ms_p50']:.2f} | "
                       f"{r['exact']['ms_p50']:.2f} | {r['p50_ratio_exact_vs_plain']:.2f}x | {r['exact']['ms_p99']:.2f} | "
                       f"{st['served']} / {st['discarded']} |")
        out += ["", f"Parallel speculation, k={s['k']}, no pacing:", "",
                "| actions | plain frames/s | parallel frames/s | ratio |", "| --- | ---: | ---: | ---: |"]
        for r in s["parallel"]:
            out.append(f"| {r['case']} | {r['plain']['fps']:.1f} | {r['parallel']['fps']:.1f} | "
                       f"{r['fps_ratio_parallel_vs_plain']:.2f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a .nfd file (default: the shipped Gridworld demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="'' skips the batch benchmark")
    p.add_argument("--batch-frames", type=int, default=50)
    p.add_argument("--repeat", default="0.5,0.8,0.95", help="repeat probabilities ('' skips speculation)")
    p.add_argument("--speculate", type=int, default=4, help="frames ahead (default 4)")
    p.add_argument("--speculation-frames", type=int, default=200)
    p.add_argument("--interval-factor", type=float, default=2.0,
                   help="the player's frame interval as a multiple of a frame's compute (default 2)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/worlds_<device>_t<threads>_<date>.json)")
    p.add_argument("--markdown-from", metavar="JSON", help="print the tables of a stored result and exit")
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    from nfd_rt.demo import MODEL_PATH

    path = args.model or MODEL_PATH
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    result: dict = {**result_header("worlds", args.device), "model": os.path.basename(path), "device": args.device,
                    "dtype": dtype}
    if args.batch_sizes:
        log("batched steps ...")
        result["batch"] = batch_benchmark(path, [int(x) for x in args.batch_sizes.split(",")], args.batch_frames,
                                          args.threads, args.device, dtype)
    if args.repeat:
        log("speculation ...")
        result["speculation"] = speculation_benchmark(path, [float(x) for x in args.repeat.split(",")],
                                                      args.speculate, args.speculation_frames, args.threads,
                                                      args.device, dtype, args.interval_factor)
    out = Path(args.out) if args.out else HERE / "results" / (
        f"worlds_{args.device}_t{args.threads}_{result['env']['date']}.json")
    if out.exists():
        log(f"{out} exists; not overwriting it (pass another --out)")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
