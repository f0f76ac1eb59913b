#!/usr/bin/env python3
"""Distil the shipped Gridworld model (the teacher, 4 flow-matching steps per frame) into students that sample in
2 steps and in 1 step, on CPU, from a seed.

    python tools/train/distill_demo.py                       # ~40 min, 1 thread: writes the shipped students
    python tools/train/distill_demo.py --quick -o /tmp/q     # seconds: checks the pipeline, not a usable model

Method: progressive distillation (Salimans & Ho, ICLR 2022, arXiv:2202.00512) with the student's steps matched
to the teacher's probability-flow ODE, frame by frame. Each student is the teacher's network fine-tuned on one
fixed schedule: the 2-step student at t = 1 and t = 0.5, the 1-step student at t = 1. For a frame whose
context (the frames before it, as the KV cache holds them) is fixed, the teacher integrates the frame's ODE from
pure noise x_1 with its own four Euler steps (1 -> 0.75 -> 0.5 -> 0.25 -> 0), and every student step is
regressed onto the teacher steps it spans:

    2-step student:  v(x_1, 1)   -> (x_1 - x_0.5) / 0.5        v(x_0.5, 0.5) -> (x_0.5 - x_0) / 0.5
    1-step student:  v(x_1, 1)   -> x_1 - x_0

so one Euler step of the student lands where the teacher's steps land: the self-consistency of the flow along
the teacher's trajectory that consistency distillation (Song et al., ICML 2023, arXiv:2303.01469) and shortcut
models (Frans et al., 2024, arXiv:2410.12557) also enforce. Why this one:
  - The runtime runs a fixed schedule stored in the .nfd file and the DiT is conditioned on t only. Shortcut
    models need the step size as a second input (a new network input the runtime does not have); consistency
    models learn every t of a 1,000-step solver and need many iterations with a target network. Progressive
    distillation trains exactly the t values the student will run, which suits a ~40-minute CPU budget.
  - With a 4-step teacher the whole teacher trajectory costs 4 cheap no-grad passes, so both students learn from
    the same trajectory and the 1-step student is taught by the teacher directly (one halving of 4 -> 1 instead
    of 4 -> 2 -> 1: no error of an intermediate student to inherit; for one step this is the direct
    distillation of Luhman & Luhman, 2021, arXiv:2101.02388).
  - The t = 0.5 input of the 2-step student is the teacher's own x_0.5 (on the trajectory, what the student's
    first step produces when it matches), not a forward-noised data latent.
Per-frame flow: a clip of CLIP frames is run twice in one attention pattern: the clean copy (data latents noised
to `context_noise` at t = context_noise, exactly what the runtime's cache-write pass stores) and the noisy copy
(the frames being generated). Noisy frame i attends to the clean frames the runtime's sink + window mask lets
frame i see (sinks and the last `window` frames before it) and to itself, never to other noisy frames: each
frame is its own one-frame sampling problem given its cached context, as in `ReferenceSession`, but CLIP - 1
frames are learned per clip. Clips and positions (episode starts, and frames far ahead of the sink so long
rollouts' RoPE offsets are seen) and the motion weight of the loss are those of train_demo.py. Students start
from the teacher's weights; the exported weights are an EMA. The VAE is the teacher's, unchanged. The student's
cache-write pass runs with the student's weights but without gradient (`velocities`).

Training length (the defaults; docs/demo.md has the figures): the 1-step student learns for 1,000 steps, the
2-step one for the first 200 only. The teacher already samples almost as well at 2 steps as at 4; a 2-step
student trained for all 1,000 steps fitted the teacher's trajectory more closely, but over `nfd-rt evaluate`'s
31-frame rollouts its PSNR fell to 28.30 dB (9.82 px), against 29.04 dB (10.13 px) after 200 steps: its errors
compound faster than the teacher's. The 1-step student needs the long run (after 100 steps it was still worse
than the teacher run at 1 step).

Everything is seeded (torch, numpy, game data); a rerun with the same seed and thread count gives the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from copy import deepcopy

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, HERE)
from nfd_rt import export  # noqa: E402
from nfd_rt.demo import MODEL_PATH, game  # noqa: E402
from nfd_rt.reference.model import DiT, NFDModel, frame_visible, masked_attention  # noqa: E402
from train_demo import CLIP, Progress, cosine_lr, encode_all, sample_clips  # noqa: E402

STUDENT_SCHEDULES = {2: (1.0, 0.5), 1: (1.0,)}


# ---------------------------------------------------------------------------------------------------------------
# The DiT on a clip whose frames are sampled one at a time against a cache of clean frames

def _groups(pos: torch.Tensor) -> list[tuple[list[int], torch.Tensor]]:
    """Rows of the batch that share a frame-position pattern (they run as one batch: one RoPE table, one mask)."""
    keys = [tuple(p.tolist()) for p in pos]
    return [([i for i, k in enumerate(keys) if k == key], torch.tensor(key)) for key in dict.fromkeys(keys)]


def context_pass(dit: DiT, c: torch.Tensor, cn: float, a: torch.Tensor, frames: torch.Tensor) -> list:
    """The cache-write pass of every clean frame of a clip (each sees its visible predecessors and itself, like
    the runtime's cache). Returns each layer's (k, v) [B, T, N, H, hd]."""
    kv = []

    def attend(layer, q, k, v):
        kv.append((k, v))
        return masked_attention(q, k, v, frames, frames, dit.cfg)

    t = torch.full(c.shape[:2], cn)
    dit.forward_frames(c, t, a, frames, attend)
    return kv


def frame_pass(dit: DiT, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, frames: torch.Tensor, kv: list
               ) -> torch.Tensor:
    """Velocity of every noisy frame x [B, T, C, h, w] at its own time t [B, T], each frame attending to the
    clean frames before it that the sink + window mask keeps (kv from `context_pass`) and to itself only."""
    cfg = dit.cfg
    T, N = x.shape[1], cfg.tokens_per_frame
    before = frame_visible(cfg, frames, frames) & (frames[None, :] < frames[:, None])  # [T, T] clean keys
    visible = torch.cat([before, torch.eye(T, dtype=torch.bool)], dim=1)  # + the frame itself
    mask = visible.repeat_interleave(N, 0).repeat_interleave(N, 1)

    def attend(layer, q, k, v):
        B, _, _, H, hd = q.shape
        keys = torch.cat([kv[layer][0], k], dim=1).reshape(B, 2 * T * N, H, hd).transpose(1, 2)
        vals = torch.cat([kv[layer][1], v], dim=1).reshape(B, 2 * T * N, H, hd).transpose(1, 2)
        qh = q.reshape(B, T * N, H, hd).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(qh, keys, vals, attn_mask=mask)
        return out.transpose(1, 2).reshape(B, T, N, H, hd)

    return dit.forward_frames(x, t, a, frames, attend)


def velocities(dit: DiT, c, cn, x, t, a, pos) -> torch.Tensor:
    """`frame_pass` over a batch whose clips have different frame positions (one group per pattern).

    The context's K/V come from `dit` itself (what its own cache-write pass would store at run time) but carry
    no gradient: a stop-gradient on the cache, as in Self Forcing's truncated backpropagation (Huang et al. 2025,
    arXiv:2506.08009), which saves a third of a training step. The student's cache-write pass is thus not trained
    directly: it changes only as the shared weights do, and the loss is always measured through the cache the
    student itself writes, as at run time."""
    out = torch.empty_like(x)
    for rows, frames in _groups(pos):
        with torch.no_grad():
            kv = context_pass(dit, c[rows], cn, a[rows], frames)
        out[rows] = frame_pass(dit, x[rows], t[rows], a[rows], frames, kv)
    return out


@torch.no_grad()
def teacher_trajectory(dit: DiT, c, cn, noise, a, pos, schedule) -> dict[float, torch.Tensor]:
    """The teacher's Euler trajectory of every noisy frame from x_1 = noise: {t: x_t} for t in schedule + [0]."""
    times = list(schedule) + [0.0]
    traj = {1.0: noise}
    out = {t: torch.empty_like(noise) for t in times[1:]}
    for rows, frames in _groups(pos):
        kv = context_pass(dit, c[rows], cn, a[rows], frames)  # the context does not change along the trajectory
        x = noise[rows]
        for t0, t1 in zip(times, times[1:]):
            v = frame_pass(dit, x, torch.full(x.shape[:2], t0), a[rows], frames, kv)
            x = x + (t1 - t0) * v
            out[t1][rows] = x
    traj.update(out)
    return traj


# ---------------------------------------------------------------------------------------------------------------

def distill(teacher: NFDModel, latents: torch.Tensor, actions: torch.Tensor, steps: dict[int, int], batch: int,
            lr: float, seed: int) -> tuple[dict[int, DiT], dict[int, list[float]]]:
    """Train the students {n steps: optimiser steps}: each learns on the first steps[n] batches (its own warm-up
    and cosine decay); the batches, noise and teacher trajectories do not depend on which students train, so a
    student comes out the same whatever the others do. Returns the students' EMA weights and their losses."""
    cfg = teacher.cfg
    if tuple(cfg.schedule) != (1.0, 0.75, 0.5, 0.25):
        raise ValueError(f"the teacher must sample the 4-step schedule (1, 0.75, 0.5, 0.25), got {cfg.schedule}")
    cn = cfg.context_noise
    tdit = teacher.dit.eval().requires_grad_(False)
    students = {n: deepcopy(tdit).train().requires_grad_(True) for n in STUDENT_SCHEDULES if steps.get(n)}
    emas = {n: deepcopy(s).requires_grad_(False) for n, s in students.items()}
    opts = {n: torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
            for n, s in students.items()}
    rng = np.random.default_rng([seed, 3])
    gen = torch.Generator().manual_seed(seed)
    total = max(steps[n] for n in students)
    prog = Progress("distil", total)
    losses: dict[int, list[float]] = {n: [] for n in students}
    for step in range(total):
        z, z_prev, a, pos = sample_clips(rng, latents, actions, batch, cfg)
        B, T = z.shape[:2]
        c = (1 - cn) * z + cn * torch.randn(z.shape, generator=gen)  # what the cache-write pass stores
        noise = torch.randn(z.shape, generator=gen)
        traj = teacher_trajectory(tdit, c, cn, noise, a, pos, cfg.schedule)
        # Motion weight (train_demo.py): cells that changed since the previous frame weigh 20x. Frame 0 of a clip
        # is the sink, which the runtime is always given, never generates: no loss there.
        moved = ((z - z_prev).abs().amax(dim=2, keepdim=True) > 0.05).float()
        weight = (1.0 + 19.0 * moved) * (torch.arange(T) > 0).float()[None, :, None, None, None]
        # 2-step student: each frame at t = 1 or t = 0.5 (frames do not see each other: independent problems).
        half = torch.rand(B, T, generator=gen) < 0.5
        h5 = half[:, :, None, None, None]
        x_in = {2: torch.where(h5, traj[0.5], noise), 1: noise}
        t_in = {2: torch.where(half, 0.5, 1.0), 1: torch.ones(B, T)}
        target = {2: torch.where(h5, (traj[0.5] - traj[0.0]) / 0.5, (noise - traj[0.5]) / 0.5),
                  1: noise - traj[0.0]}
        for n, dit in students.items():
            if step >= steps[n]:
                continue
            for g in opts[n].param_groups:
                g["lr"] = cosine_lr(step, steps[n], lr, 20)
            v = velocities(dit, c, cn, x_in[n], t_in[n], a, pos)
            loss = (weight * (v - target[n]) ** 2).sum() / weight.sum()
            opts[n].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
            opts[n].step()
            decay = min(0.995, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(emas[n].parameters(), dit.parameters()):
                    pe.lerp_(p, 1 - decay)
            losses[n].append(loss.item())
        prog.step(step, sum(losses[n][-1] for n in students))
    return emas, losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=MODEL_PATH, help="the 4-step model to distil (default: the shipped one)")
    p.add_argument("-o", "--out-dir", default=os.path.dirname(MODEL_PATH),
                   help="where gridworld-2step.nfd, gridworld-1step.nfd and gridworld.distill.json go")
    p.add_argument("--seed", type=int, default=0, help="seed of everything: data, batches, noise")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (results depend on it slightly; 1: see docs/demo.md)")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps of the 1-step student")
    p.add_argument("--steps-2", type=int, default=200,
                   help="optimiser steps of the 2-step student (it learns on the first STEPS_2 batches; it needs "
                   "few: docs/demo.md)")
    p.add_argument("--students", default="2,1", help="which students to train and write (for experiments)")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--episodes", type=int, default=200, help="Gridworld episodes (rooms of the teacher's data)")
    p.add_argument("--episode-length", type=int, default=96)
    p.add_argument("--quick", action="store_true", help="tiny run of every stage (pipeline check, not a model)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.steps_2, args.batch, args.episodes, args.episode_length = 3, 2, 4, 4, 24
    chosen = {int(n) for n in args.students.split(",")}
    if not chosen or not chosen <= set(STUDENT_SCHEDULES):
        p.error(f"--students: a comma-separated subset of {sorted(STUDENT_SCHEDULES)}, got {args.students!r}")
    student_steps = {n: s for n, s in ((2, args.steps_2), (1, args.steps)) if n in chosen}

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start, cpu_start, load_start = time.time(), time.process_time(), os.getloadavg()[0]
    teacher = export.load(args.teacher)
    cfg = teacher.cfg
    log: dict = {"seed": args.seed, "threads": args.threads, "torch": torch.__version__,
                 "args": {k: v for k, v in vars(args).items() if k not in ("teacher", "out_dir")},  # no local paths
                 "teacher": os.path.basename(args.teacher), "teacher_schedule": list(cfg.schedule),
                 "method": "progressive distillation along the teacher's per-frame Euler trajectory"}

    # The teacher's training data: Gridworld rooms from the same seed (train_demo.py uses seed 0 too).
    print(f"[data] {args.episodes} Gridworld episodes x {args.episode_length} frames, encoded by the teacher's VAE",
          flush=True)
    t0 = time.time()
    frames, actions = game.dataset(args.episodes, args.episode_length, seed=args.seed, action_dim=cfg.action_dim)
    latents = encode_all(teacher, frames)
    del frames
    log["data_seconds"] = time.time() - t0
    print(f"[data] latents {tuple(latents.shape)} in {log['data_seconds']:.0f} s", flush=True)

    print(f"[distil] batch {args.batch} clips of {CLIP} frames; optimiser steps per student (sampling steps: "
          f"optimiser steps): {student_steps}", flush=True)
    t0 = time.time()
    students, losses = distill(teacher, latents, torch.from_numpy(actions), student_steps, args.batch, args.lr,
                               args.seed)
    log["distill_seconds"] = time.time() - t0

    os.makedirs(args.out_dir, exist_ok=True)
    log["students"] = {}
    for n, dit in students.items():
        model = NFDModel(cfg.replace(schedule=STUDENT_SCHEDULES[n]), init_seed=None)
        model.dit.load_state_dict(dit.state_dict())
        model.vae.load_state_dict(teacher.vae.state_dict())
        path = os.path.join(args.out_dir, f"gridworld-{n}step.nfd")
        export.save(model, path)
        log["students"][n] = {"file": os.path.basename(path), "schedule": list(STUDENT_SCHEDULES[n]),
                              "optimiser_steps": student_steps[n],
                              "file_bytes": os.path.getsize(path), "losses": losses[n][::5]}
        print(f"[export] wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)", flush=True)
    log["total_seconds"] = time.time() - t_start
    # CPU seconds and the machine's load average: a wall time measured on a shared machine needs both to be read.
    log["cpu_seconds"] = time.process_time() - cpu_start
    log["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    with open(os.path.join(args.out_dir, "gridworld.distill.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"[done] {log['total_seconds'] / 60:.1f} min ({log['cpu_seconds'] / 60:.1f} CPU min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
