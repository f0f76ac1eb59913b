"""The CUDA paths written since the last GPU run, each one switch away from the path that was measured, and the
tools that use the list: the fallback run and the bisection of tools/gpu/run.sh.

    python tools/gpu/new_paths.py env-off                 # shell words: every new path off (run.sh's fallback)
    python tools/gpu/new_paths.py check FPS_JSON          # exit 1 unless nfd_rt ran and its first frame matches
    python tools/gpu/new_paths.py bisect --config nfd-310m --dtype bfloat16 --device cuda --out bisect.json

    python tools/gpu/new_paths.py headline --out fps.json --work DIR -- FPS_PY_ARGS...   # run.sh's figure of record

`headline` runs benchmarks/fps.py with the given arguments and checks its JSON; if the run fails, hangs (it may
take 60% of the time, --first-share) or its first frame does not match eager's, it re-runs at once with every new
path off, checks again, and (if that passes and time is left) bisects to name the path that broke. It writes
`DIR/working_env.sh`: the exports that the rest of a GPU run should use (every broken path off; all paths off when
the culprit is unknown), and `DIR/headline.json`.

`bisect` runs each configuration in its own process (a kernel that faults can poison the CUDA context): every
path off (the measured baseline, which fills the cache and snapshots it half-way and full), then each new path on
alone. Each run makes the first frame from an empty cache, one frame from the half-filled snapshot and two from
the full one, and is compared with the baseline's frames: the same contexts for all, so right kernels that round
differently stay within the limits (over a long rollout their differences could grow). A path whose run fails
or whose frames differ by more than the dtype allows is the one that broke. It runs on the CPU too (the switches
only change CUDA code, so every run should match there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# switch: (value that turns the new path off, what the new path is). Unset = the new path (the default).
NEW_PATHS = {
    "NFD_RT_ATTENTION": ("ours", "attention: cuDNN's fused SDPA over 1-16 key batches (timed against ours at open)"),
    "NFD_RT_FLASHINFER_SM90": ("off", "attention: FlashInfer's Hopper attention (TMA + wgmma) over 1-16 key ranges "
                                      "(timed against ours and cuDNN at open; builds with FlashInfer only)"),
    "NFD_RT_CONV": ("im2col", "VAE convolutions as CUTLASS NHWC implicit GEMMs or cuDNN (timed at open)"),
    "NFD_RT_ATTENTION_ROWS": ("64", "attention: 128 query rows per CTA (timed against 64 at open)"),
    "NFD_RT_ATTENTION_KEYS": ("64", "attention: FlashAttention-2's 64 x 128 tile at head_dim 64 (timed at open)"),
    "NFD_RT_ATTENTION_SOFTMAX": ("separate", "attention: folded softmax, one FFMA + ex2.approx a score, liveness "
                                             "by __syncthreads_and (timed against separate at open)"),
    "NFD_RT_CHECK_CHOICES": ("off", "session open: each attention, convolution and cuBLASLt GEMM engine checked "
                                    "against a measured kernel on seeded inputs before it can be chosen"),
    "NFD_RT_FUSED_NORM": ("off", "gated residual add folded into the next layernorm_modulate"),
    "NFD_RT_ROPE_GROUP": ("1", "RoPE split: one angle per (token, pair) for 4 heads"),
    "NFD_RT_DECODE_STREAM": ("off", "decode on a second stream beside the cache-write pass"),
    "NFD_RT_PINNED_STAGING": ("off", "one host synchronisation a step through page-locked staging"),
}

# First frame against the fp32 eager reference (fps.py's first_frame_vs_eager): the committed H200 run had
# max 6, mean 0.86 in bf16; a broken kernel gives tens. Frames of two nfd_rt runs of one dtype: tighter.
FIRST_FRAME_LIMITS = {"mean_abs": 3.0, "max_abs": 64}
BISECT_LIMITS = {"mean_abs": 2.0, "max_abs": 64}


def env_off() -> dict[str, str]:
    return {k: v[0] for k, v in NEW_PATHS.items()}


def simulated_break() -> str | None:
    """A test hook for the fallback without a GPU: NFD_RT_DRY_BREAK=<switch> makes `check` and the bisection's
    runs fail while that switch's new path is on, as a broken kernel would. (NFD_RT_DRY_HANG=1 makes the
    headline's first run hang, as a kernel that never finishes would: it is stopped at --first-share.)"""
    name = os.environ.get("NFD_RT_DRY_BREAK")
    if not name:
        return None
    if name not in NEW_PATHS:
        raise SystemExit(f"NFD_RT_DRY_BREAK must name one of {', '.join(NEW_PATHS)}, got {name!r}")
    return None if os.environ.get(name) == NEW_PATHS[name][0] else f"{name} on (simulated by NFD_RT_DRY_BREAK)"


def check(path: str) -> int:
    """0 when fps.py's JSON has an nfd_rt runner with a figure and a first frame that matches eager's."""
    try:
        result = json.load(open(path))
    except (OSError, ValueError) as e:
        print(f"check: cannot read {path}: {e}")
        return 1
    ours = {k: v for k, v in result.get("runners", {}).items() if k.startswith("nfd_rt")}
    if not ours:
        print(f"check: no nfd_rt runner in {path}")
        return 1
    broken = simulated_break()
    if broken:
        print(f"check: broken path: {broken}")
        return 1
    bad = 0
    for name, r in ours.items():
        if "fps" not in r:
            print(f"check: {name} failed: {r.get('error', 'no fps')}")
            bad += 1
            continue
        # Engines the choice at open left out (a failed launch, or a wrong result in its check): not a failure of
        # the run (the session ran the others), but a kernel to mend, so said where the run's log shows it.
        for key, line in sorted(r.get("engines", {}).items()):
            if key.endswith("(choice)") and ("wrong result" in line or "failed" in line):
                print(f"check: {name}: the choice at open left an engine out: {key}: {line}")
        diff = r.get("first_frame_vs_eager")
        if diff is None:
            print(f"check: {name}: {r['fps']:.1f} FPS, no first frame to compare (eager did not run)")
            continue
        over = [k for k, lim in FIRST_FRAME_LIMITS.items() if diff[k] > lim]
        print(f"check: {name}: {r['fps']:.1f} FPS, first frame vs eager {diff}"
              + (f" over the limits {FIRST_FRAME_LIMITS}" if over else " (ok)"))
        bad += bool(over)
    return 1 if bad else 0


AFTER_SNAPSHOT = 2  # frames each bisection run makes from the baseline's full-cache snapshot


def _worker(args) -> int:
    """One bisection run: the first frame from an empty cache, one frame continuing from a half-filled cache and
    AFTER_SNAPSHOT frames continuing from a full one, to an .npy file (the parent compares). The baseline
    (--snapshot-out PREFIX) fills the cache itself and writes PREFIX.mid and PREFIX.full, which the others
    (--snapshot-in PREFIX) continue from: every run is compared on the same contexts, so one step's rounding
    differences between right kernels cannot grow over a long rollout into a false verdict, and the shapes of a
    filling and of a full cache both run."""
    import numpy as np

    import nfd_rt

    broken = simulated_break()
    if broken:
        raise SystemExit(f"the run failed: {broken}")
    cfg = nfd_rt.configs.get(args.config)
    rng = np.random.default_rng(1)
    n = args.frames
    actions = [rng.standard_normal(cfg.action_dim).astype(np.float32) for _ in range(n)]
    mid = max(1, (n - AFTER_SNAPSHOT) // 2)  # frames made before the half-filled snapshot
    prefix = args.snapshot_out or args.snapshot_in
    model = nfd_rt.Model(args.model, device=args.device, dtype=args.dtype)
    with model.session(seed=0) as s:
        s.reset()
        frames = [s.step(actions[0])]
        if args.snapshot_out:
            for i in range(1, n - AFTER_SNAPSHOT):
                if i == mid:
                    with open(prefix + ".mid", "wb") as f:
                        f.write(s.snapshot())
                s.step(actions[i])
            with open(prefix + ".full", "wb") as f:
                f.write(s.snapshot())
    for suffix, continued in ((".mid", actions[mid:mid + 1]), (".full", actions[n - AFTER_SNAPSHOT:])):
        with open(prefix + suffix, "rb") as f:
            blob = f.read()
        with model.session(snapshot=blob) as s:
            frames += [s.step(a) for a in continued]
    np.save(args.worker, np.stack(frames))
    return 0


def bisect(args, preset: dict[str, str] | None = None) -> dict:
    """Every path off (the baseline), then each new path on alone; returns the report (its "broken" list).
    `preset`: switches the GPU run set before (a path the op harness saw fail): they hold in every run, and their
    paths are not turned on."""
    import numpy as np

    import nfd_rt

    cfg = nfd_rt.configs.get(args.config)
    frames = max(args.frames or cfg.sink_frames + cfg.window + 3, AFTER_SNAPSHOT + 3)  # past a full cache
    deadline = time.monotonic() + args.seconds
    preset = preset or {}
    runs = [("all new paths off", {**env_off(), **preset})]
    for name, (off, what) in NEW_PATHS.items():
        if name in preset:
            print(f"bisect: {name}: kept at {preset[name]} (set before the headline), not turned on", flush=True)
            continue
        env = {**env_off(), **preset}
        env.pop(name)
        runs.append((f"{name} on ({what})", env))
    report = {"config": args.config, "device": args.device, "dtype": args.dtype, "frames": frames,
              "limits": BISECT_LIMITS, "runs": [], "broken": []}
    base = None
    with tempfile.TemporaryDirectory(prefix="nfd_bisect_") as tmp:
        model, snapshot = os.path.join(tmp, "model.nfd"), os.path.join(tmp, "baseline")  # .mid, .full
        nfd_rt.export.save_random(cfg, model)
        for label, env in runs:
            left = deadline - time.monotonic()
            if left < 5:
                report["runs"].append({"run": label, "env": env, "ok": None, "error": "not run: out of time"})
                print(f"bisect: {label}: not run (out of time)", flush=True)
                continue
            out = os.path.join(tmp, f"run{len(report['runs'])}.npy")
            child = {**{k: v for k, v in os.environ.items() if k not in NEW_PATHS}, **env}
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "_worker", "--worker", out, "--model", model, "--config", args.config,
                   "--device", args.device, "--dtype", args.dtype, "--frames", str(frames),
                   "--snapshot-in" if base is not None else "--snapshot-out", snapshot]
            try:
                r = subprocess.run(cmd, env=child, capture_output=True, text=True, timeout=min(args.timeout, left))
                rc, err = r.returncode, (r.stderr.strip().splitlines() or ["(no output)"])[-1][:500]
            except subprocess.TimeoutExpired:
                rc, err = 124, f"timed out after {min(args.timeout, left):.0f} s"
            entry = {"run": label, "env": env, "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
            if rc != 0:
                entry["error"] = err
            else:
                got = np.load(out)
                if base is None:
                    base = got
                d = np.abs(got.astype(np.int16) - base.astype(np.int16))
                entry["vs_all_off"] = {"mean_abs": float(d.mean()), "max_abs": int(d.max())}
            ok = rc == 0 and all(entry["vs_all_off"][k] <= lim for k, lim in BISECT_LIMITS.items())
            entry["ok"] = ok
            if not ok and base is not None and report["runs"]:
                report["broken"].append(label.split(" ")[0])
            report["runs"].append(entry)
            print(f"bisect: {label}: {'ok' if ok else 'BROKEN'} {entry.get('vs_all_off', entry.get('error'))} "
                  f"({entry['seconds']} s)", flush=True)
            if base is None:  # the baseline itself failed: nothing to compare with
                report["baseline_failed"] = True
                break
    report["complete"] = all(r.get("ok") is not None for r in report["runs"]) and not report.get("baseline_failed")
    print("bisect: broken paths: " + (", ".join(report["broken"]) if report["broken"] else "none")
          + ("" if report["complete"] else " (incomplete)"), flush=True)
    return report


def headline(args, fps_args: list[str]) -> int:
    """fps.py's figure of record, with the fallback and the bisection; see the module's docstring."""
    os.makedirs(args.work, exist_ok=True)
    deadline = time.monotonic() + args.seconds
    fps_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks", "fps.py")
    report: dict = {"fps_args": fps_args, "runs": []}
    # Switches the run set before the headline (run.sh turns FlashInfer's Hopper attention off when the op harness
    # saw it fail): every run here keeps them unless it sets them itself, and so does the rest of the run.
    preset = {k: os.environ[k] for k in NEW_PATHS if k in os.environ}

    def write_working_env(working: dict) -> None:
        with open(os.path.join(args.work, "working_env.sh"), "w") as f:
            f.write("# written by tools/gpu/new_paths.py headline: the switches the rest of the GPU run uses\n")
            f.writelines(f"export {k}={v}\n" for k, v in {**preset, **working}.items())

    def run_fps(label: str, env: dict, out: str, share: float = 1.0) -> bool:
        # share < 1: this run may take only that part of the time left, so a run that hangs (a kernel that never
        # finishes) still leaves the fallback its time.
        left = (deadline - time.monotonic()) * share
        child = {**{k: v for k, v in os.environ.items() if k not in NEW_PATHS}, **preset, **env}
        cmd = [sys.executable, fps_py, "--config", args.config, "--device", args.device, "--dtype", args.dtype,
               *fps_args, "--out", out, "--overwrite"]
        if share < 1.0 and os.environ.get("NFD_RT_DRY_HANG") == "1":  # test hook: the first run never finishes
            cmd = [sys.executable, "-c", "import time; time.sleep(3600)"]
        print(f"headline: {label}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, env=child, timeout=max(left, 1)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        ok = rc == 0 and subprocess.run([sys.executable, __file__, "check", out], env=child).returncode == 0
        report["runs"].append({"run": label, "env": env, "rc": rc, "ok": ok, "json": os.path.basename(out),
                               "seconds": round(time.perf_counter() - t0, 1)})
        print(f"headline: {label}: {'ok' if ok else 'FAILED'} (rc {rc})", flush=True)
        return ok

    working: dict[str, str] = {}
    if run_fps("every new path on (the default)", {}, args.out, share=args.first_share):
        report["result"] = "the new paths work"
    else:
        first = os.path.join(args.work, "fps_new_paths_on.json")
        if os.path.exists(args.out):
            os.replace(args.out, first)
        working = env_off()
        write_working_env(working)  # if this step is stopped before it ends, the rest of the run has every path off
        if not run_fps("every new path off (the measured paths)", working, args.out):
            report["result"] = "fails with every new path off too: not a new path (see run.log)"
        elif deadline - time.monotonic() < args.bisect_min_seconds:
            report["result"] = "a new path broke; no time to bisect: the rest of the run has every new path off"
        else:
            b = argparse.Namespace(config=args.config, device=args.device, dtype=args.dtype, frames=0, timeout=120,
                                   seconds=deadline - time.monotonic())
            report["bisect"] = bisect(b, preset)
            broken = report["bisect"]["broken"]
            if broken and report["bisect"]["complete"]:
                working = {k: NEW_PATHS[k][0] for k in broken}
                report["result"] = f"broken: {', '.join(broken)}; the rest of the run has those paths off"
            else:
                report["result"] = ("a new path broke; the bisection did not name it alone"
                                    f" ({', '.join(broken) or 'none failed alone'}): the rest of the run has every "
                                    "new path off")
    report["working_env"] = {**preset, **working}
    with open(os.path.join(args.work, "headline.json"), "w") as f:
        json.dump(report, f, indent=1)
    write_working_env(working)
    print(f"headline: {report['result']}", flush=True)
    return 0 if report["runs"][-1]["ok"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env-off", help="print NAME=VALUE words that turn every new path off")
    c = sub.add_parser("check", help="check fps.py's JSON: nfd_rt ran and its first frame matches eager's")
    c.add_argument("fps_json")
    h = sub.add_parser("headline", help="fps.py's figure of record, with the fallback and the bisection")
    h.add_argument("--out", required=True, help="fps.py's JSON (the working run's)")
    h.add_argument("--work", required=True, help="folder for headline.json, working_env.sh and the failed run")
    h.add_argument("--seconds", type=float, default=240, help="time for all of it (default 240)")
    h.add_argument("--first-share", type=float, default=0.6,
                   help="part of --seconds the first run (every new path on) may take, the rest kept for the "
                        "fallback (default 0.6)")
    h.add_argument("--bisect-min-seconds", type=float, default=30,
                   help="bisect only if this much time is left (default 30)")
    for name in ("bisect", "_worker", "headline"):
        b = h if name == "headline" else sub.add_parser(
            name, help="which new path breaks a rollout" if name == "bisect" else argparse.SUPPRESS)
        b.add_argument("--config", default="nfd-310m", help="model config (default nfd-310m)")
        b.add_argument("--device", default="cuda", help="device (default cuda)")
        b.add_argument("--dtype", default="bfloat16", help="dtype (default bfloat16)")
        if name == "headline":
            continue
        b.add_argument("--frames", type=int, default=0, help="frames a rollout (default: a full cache + 3)")
        b.add_argument("--timeout", type=float, default=120, help="seconds a run may take (default 120)")
        b.add_argument("--seconds", type=float, default=600, help="time for all runs (default 600)")
        b.add_argument("--out", help="JSON report")
        b.add_argument("--worker", help=argparse.SUPPRESS)
        b.add_argument("--model", help=argparse.SUPPRESS)
        b.add_argument("--snapshot-out", help=argparse.SUPPRESS)
        b.add_argument("--snapshot-in", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        rest, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    args = p.parse_args(argv)
    if args.cmd == "env-off":
        print(" ".join(f"{k}={v}" for k, v in env_off().items()))
        return 0
    if args.cmd == "check":
        return check(args.fps_json)
    if args.cmd == "_worker":
        return _worker(args)
    if args.cmd == "headline":
        return headline(args, rest)
    report = bisect(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["broken"] or report.get("baseline_failed") else 0


if __name__ == "__main__":
    sys.exit(main())
