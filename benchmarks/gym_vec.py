#!/usr/bin/env python3
"""The Gymnasium vector env against single envs stepped one after another, in one run.

    python benchmarks/gym_vec.py                    # 16 worlds of the shipped Gridworld model, CPU, 1 thread
    python benchmarks/gym_vec.py --num-envs 16 --steps 40 --threads 2

Runners, all over one shared nfd_rt.Model, the same random MultiBinary actions and seeds:
- `vector`: nfd_rt.gym.VectorEnv(num_envs): one nfd_rt.step_batch call a step;
- `single`: num_envs nfd_rt.gym.Env, stepped one after another (what SyncVectorEnv would do);
- `step_batch`: nfd_rt.step_batch on num_envs bare sessions, no environment around it (the ceiling).
Every world first steps sink + window + 1 frames, so the timed frames see a full cache; no episode ends while
timing. The runners take turns in rounds (vector, single, step_batch, vector, ...) so that a busy period of a
shared machine falls on all of them; frames/s are over all timed steps of a runner. Needs gymnasium, not PyTorch.
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

from common import result_header  # noqa: E402  (benchmarks/common.py, beside this file)
from worlds import log  # noqa: E402


def run(path: str, num_envs: int, steps: int, rounds: int, threads: int, device: str, dtype: str) -> dict:
    import nfd_rt
    import nfd_rt.gym as G
    from gymnasium.spaces import MultiBinary

    model = nfd_rt.Model(path, device=device, dtype=dtype, threads=threads)
    cfg = model.config
    warm = cfg.sink_frames + cfg.window + 1
    vec = G.VectorEnv(num_envs, model)
    singles = [G.Env(model) for _ in range(num_envs)]
    vec.reset(seed=0)
    for i, env in enumerate(singles):
        env.reset(seed=i)
    bare = [model.session(seed=i) for i in range(num_envs)]
    for s, frame in zip(bare, vec.render()):  # the vector env's start rooms as their context
        s.reset(frames=frame[None])
    space = vec.action_space
    space.seed(0)
    if isinstance(vec.single_action_space, MultiBinary):  # the Gridworld models' arrow keys
        to_vector = G.gridworld_actions(cfg.action_dim)[1]
    else:  # Box(-1, 1, (action_dim,)): the model's vector itself
        to_vector = lambda a: np.asarray(a, np.float32)  # noqa: E731
    total = warm + rounds * steps
    actions = [space.sample() for _ in range(total)]
    vectors = [np.stack([to_vector(a) for a in batch]) for batch in actions]

    def step_vector(t):
        vec.step(actions[t])

    def step_single(t):
        for env, a in zip(singles, actions[t]):
            env.step(a)

    def step_bare(t):
        nfd_rt.step_batch(bare, vectors[t])

    runners = {"vector": step_vector, "single": step_single, "step_batch": step_bare}
    log(f"warming up: {warm} steps of every runner (sink {cfg.sink_frames} + window {cfg.window} + 1) ...")
    for t in range(warm):
        for fn in runners.values():
            fn(t)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, fn in runners.items():
            for k in range(steps):
                t = warm + r * steps + k
                t0 = time.perf_counter()
                fn(t)
                times[name].append(time.perf_counter() - t0)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {num_envs * steps / sum(ts[-steps:]):.1f}" for name, ts in times.items()) + " frames/s")
    full = all(s.frame_index >= warm for s in vec.sessions)
    out = {}
    for name, ts in times.items():
        t = np.asarray(ts)
        out[name] = {"steps": len(t), "frames": num_envs * len(t), "seconds": float(t.sum()),
                     "fps": num_envs * len(t) / float(t.sum()), "ms_per_step_p50": float(np.median(t) * 1e3),
                     "ms_per_step_p99": float(np.percentile(t, 99) * 1e3),
                     "fps_by_round": [num_envs * steps / sum(ts[i * steps:(i + 1) * steps]) for i in range(rounds)]}
    vec.close()
    for env in singles:
        env.close()
    return {"num_envs": num_envs, "threads": threads, "warmup_steps": warm, "steps_per_round": steps,
            "rounds": rounds, "full_cache": full, "visible_frames": cfg.sink_frames + cfg.window + 1,
            "runners": out, "vector_vs_single": out["vector"]["fps"] / out["single"]["fps"],
            "vector_vs_step_batch": out["vector"]["fps"] / out["step_batch"]["fps"]}


def markdown(result: dict) -> str:
    b = result["bench"]
    env = result["environment"]
    lines = [f"{b['num_envs']} worlds of `{result['model']}`, {result['device']} {result['dtype']}, {b['threads']} "
             f"thread(s), {env['cpu']}, commit `{env['commit'][:10]}`, {env['date']}: {b['rounds']} rounds x "
             f"{b['steps_per_round']} steps a runner after {b['warmup_steps']} warm-up steps (a full cache: "
             f"{b['full_cache']}).", "",
             "| runner | frames/s | vs single envs | ms per step of all worlds (p50) |", "| --- | ---: | ---: | ---: |"]
    single = b["runners"]["single"]["fps"]
    names = {"vector": "`VectorEnv` (one `step_batch` a step)", "single": f"{b['num_envs']} `Env`, one after another",
             "step_batch": "bare `step_batch`, no env"}
    for name, r in b["runners"].items():
        lines.append(f"| {names[name]} | {r['fps']:.1f} | {r['fps'] / single:.2f}x | {r['ms_per_step_p50']:.1f} |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a .nfd file (default: the shipped Gridworld demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps of a runner per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds the runners take turns in (default 3)")
    p.add_argument("--note", default="", help="a sentence stored with the result (e.g. what else ran)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/gym_vec_<device>_t<threads>_<date>.json)")
    p.add_argument("--markdown-from", metavar="JSON", help="print the table of a stored result and exit")
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    from nfd_rt.demo import MODEL_PATH

    path = args.model or MODEL_PATH
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    result: dict = {**result_header("gym_vec", args.device), "model": os.path.basename(path), "device": args.device,
                    "dtype": dtype, "note": args.note}
    result["bench"] = run(path, args.num_envs, args.steps, args.rounds, args.threads, args.device, dtype)
    result["environment"]["load_average_after"] = os.getloadavg()
    out = Path(args.out) if args.out else HERE / "results" / (
        f"gym_vec_{args.device}_t{args.threads}_{result['environment']['date'][:10]}.json")
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
