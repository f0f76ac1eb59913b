#!/usr/bin/env python3
"""The few-step table of docs/demo.md: the Gridworld teacher at 4, 2 and 1 step(s) and the distilled students at
2 and 1, each scored by `nfd-rt evaluate` and timed side by side.

    python benchmarks/steps.py -o benchmarks/results/steps_tiny_cpu_DATE     # ~6 min on 2 CPU cores
    python benchmarks/steps.py --sequences 4 --length 12 --fps-frames 20 -o /tmp/s   # seconds: a smoke run

Quality: each row runs `nfd-rt evaluate` (a real process, the command a user types; C++ CPU runtime, fp32, noise
seed 0) and keeps its JSON; every figure there but `fps` is deterministic. Speed: evaluate's own frames/s are
taken minutes apart on a machine that may be shared, so this script also times the five rows interleaved: round
after round, each row steps `--fps-frames` frames of one held-out sequence after a reset and 4 untimed frames;
the median over rounds of each row's frames/s is reported with the load average seen during the measurement,
and the same for `step_latent` (the DiT passes alone, without the VAE decode).
Writes one JSON per row (eval_<row>.json), steps.json (everything) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import nfd_rt
from nfd_rt import export
from nfd_rt.demo import MODELS
from nfd_rt.demo.evaluate import held_out_sequence

# (row name, label in the table, `nfd-rt evaluate` options)
ROWS = [
    ("teacher-4", "teacher, 4 steps (shipped `gridworld`)", ["--steps", "4"]),
    ("teacher-2", "teacher at 2 steps, no distillation", ["--model", "gridworld", "--steps", "2"]),
    ("teacher-1", "teacher at 1 step, no distillation", ["--model", "gridworld", "--steps", "1"]),
    ("student-2", "student, 2 steps (`gridworld-2step`)", ["--steps", "2"]),
    ("student-1", "student, 1 step (`gridworld-1step`)", ["--steps", "1"]),
]


def model_file(options: list[str], tmp: str) -> str:
    """The .nfd file `nfd-rt evaluate options` runs (a copy with the N-step schedule for the teacher rows)."""
    steps = int(options[options.index("--steps") + 1])
    if "--model" in options:
        src = MODELS[options[options.index("--model") + 1]]
        return export.with_schedule(src, os.path.join(tmp, f"teacher-{steps}.nfd"), export.uniform_schedule(steps))
    return MODELS[{4: "gridworld", 2: "gridworld-2step", 1: "gridworld-1step"}[steps]]


def interleaved_fps(files: dict[str, str], frames: int, rounds: int, threads: int) -> dict:
    seq, actions = held_out_sequence(0, frames + 5)
    sessions = {name: nfd_rt.Session(path, device="cpu", seed=0, threads=threads) for name, path in files.items()}
    fps: dict[str, list[float]] = {name: [] for name in files}
    latent: dict[str, list[float]] = {name: [] for name in files}  # step_latent: the DiT passes, no VAE decode
    load = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, s in sessions.items():
            for out, step in ((fps, s.step), (latent, s.step_latent)):
                s.reset(frames=seq[:1])
                for a in actions[1:5]:
                    step(a)
                t0 = time.perf_counter()
                for a in actions[5:]:
                    step(a)
                out[name].append(frames / (time.perf_counter() - t0))
        load.append(os.getloadavg()[0])
    for s in sessions.values():
        s.close()
    return {"frames_per_round": frames, "rounds": rounds, "threads": threads, "load_average_1min": load,
            "fps": {name: float(np.median(v)) for name, v in fps.items()}, "fps_all_rounds": fps,
            "latent_fps": {name: float(np.median(v)) for name, v in latent.items()}, "latent_fps_all_rounds": latent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out-dir", required=True, help="folder for the JSON files")
    p.add_argument("--sequences", type=int, default=100)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--fps-frames", type=int, default=100, help="timed frames per row and round")
    p.add_argument("--fps-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of every session (0 = physical cores; default 1: one core of a shared machine "
                   "is steadier to time than two; the quality figures do not depend on it)")
    p.add_argument("--reuse-evaluations", action="store_true",
                   help="take the eval_<row>.json already in --out-dir (deterministic) and only time the rows")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(nfd_rt.__file__)),
                                                      env.get("PYTHONPATH")]))
    results = {}
    for name, label, options in ROWS:
        out = os.path.join(args.out_dir, f"eval_{name}.json")
        cmd = [sys.executable, "-m", "nfd_rt.cli", "evaluate", *options, "--device", "cpu", "--sequences",
               str(args.sequences), "--length", str(args.length), "--threads", str(args.threads), "--json", out]
        if not (args.reuse_evaluations and os.path.exists(out)):
            print(f"[{name}] nfd-rt {' '.join(cmd[3:])}", flush=True)
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            results[name] = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: model_file(options, tmp) for name, _, options in ROWS}
        print(f"[fps] {args.fps_rounds} interleaved rounds of {args.fps_frames} frames per row", flush=True)
        speed = interleaved_fps(files, args.fps_frames, args.fps_rounds, args.threads)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import result_header  # benchmarks/common.py

    summary = {**result_header("steps"), "date": _dt.date.today().isoformat(), "speed": speed, "rows": {}}
    print("\n| sampling | agent position error (px) | PSNR vs the game (dB) | agent found | coin state agrees | "
          "collected coins still shown | frames/s | latents/s (no decode) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, label, options in ROWS:
        r = results[name]
        m = r["model"]
        row = {"label": label, "command": "nfd-rt evaluate " + " ".join(options), "model_file": r["model_file"],
               "schedule": r["schedule"], "position_error_px": m["position_error_px"], "psnr_db": m["psnr_db"],
               "agent_found_fraction": r["agent_found_fraction"], "coin_state_agreement": m["coin_state_agreement"],
               "coins_lingering_fraction": m["coins_lingering_fraction"],
               "coins_vanished_fraction": m["coins_vanished_fraction"], "fps_interleaved": speed["fps"][name],
               "latent_fps_interleaved": speed["latent_fps"][name], "fps_in_evaluate": r["fps"]}
        summary["rows"][name] = row
        print(f"| {label} | {row['position_error_px']:.2f} | {row['psnr_db']:.2f} | "
              f"{100 * row['agent_found_fraction']:.1f}% | {100 * row['coin_state_agreement']:.1f}% | "
              f"{100 * row['coins_lingering_fraction']:.1f}% | {row['fps_interleaved']:.0f} | "
              f"{row['latent_fps_interleaved']:.0f} |")
    b = results["teacher-4"]["repeat_last_frame"]
    summary["repeat_last_frame"] = {k: b[k] for k in ("position_error_px", "psnr_db", "coin_state_agreement",
                                                      "coins_lingering_fraction", "coins_vanished_fraction")}
    print(f"| repeat the last frame (baseline) | {b['position_error_px']:.2f} | {b['psnr_db']:.2f} | - | "
          f"{100 * b['coin_state_agreement']:.1f}% | {100 * b['coins_lingering_fraction']:.1f}% | - | - |")
    print(f"\nload average (1 min) during the fps rounds: {min(speed['load_average_1min']):.2f}-"
          f"{max(speed['load_average_1min']):.2f}; {summary['environment']['cpu']}")
    with open(os.path.join(args.out_dir, "steps.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
