"""`nfd-rt` command line: inspect a .nfd file, export a random model, run a demo rollout.

    nfd-rt info m.nfd
    nfd-rt export-random tiny -o m.nfd          (needs torch)
    nfd-rt demo [--config tiny] [--frames 32] [--out nfd_demo]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def scripted_action(i: int, action_dim: int) -> np.ndarray:
    """Frame i's demo action: one key held for 8 frames, cycling through the keys (same as examples/c)."""
    a = np.zeros(action_dim, dtype=np.float32)
    a[(i // 8) % action_dim] = 1.0
    return a


def _info(args: argparse.Namespace) -> int:
    from ._native import core

    d = core().inspect_file(args.file)
    cfg = json.loads(d["config"])
    tensors = d["tensors"]
    params = sum(int(np.prod(t["shape"])) for t in tensors.values())
    print(f"{args.file}: .nfd format version {d['format_version']}, model {cfg['name']!r}")
    print(f"  {len(tensors)} tensors, {params:,} parameters ({params * 4 / 2**20:.1f} MiB as float32)")
    if args.json:
        print(json.dumps(cfg, indent=2, sort_keys=True))
    else:
        for k in sorted(cfg):
            print(f"  {k}: {cfg[k]}")
    if args.tensors:
        for name, t in tensors.items():
            print(f"  {name}: {t['dtype']}{t['shape']}")
    return 0


def _export_random(args: argparse.Namespace) -> int:
    try:
        from . import configs, export
        from .reference import NFDModel
    except ImportError as e:
        print(f"export-random needs PyTorch ({e}): pip install 'nfd_rt[torch]'", file=sys.stderr)
        return 2
    cfg = configs.get(args.config) if not args.config.endswith(".json") else configs.NFDConfig.from_json(
        open(args.config).read())
    export.save(NFDModel(cfg, init_seed=args.seed), args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, random {cfg.name} weights)")
    return 0


def _write_frames(frames: list[np.ndarray], out: str) -> str:
    os.makedirs(out, exist_ok=True)
    try:
        import imageio.v2 as imageio
    except ImportError:
        imageio = None
    if imageio is not None:
        path = os.path.join(out, "demo.gif")
        imageio.mimsave(path, frames, duration=1 / 15)
        return path
    for i, f in enumerate(frames):
        with open(os.path.join(out, f"frame_{i:03d}.ppm"), "wb") as fh:
            fh.write(f"P6\n{f.shape[1]} {f.shape[0]}\n255\n".encode() + np.ascontiguousarray(f).tobytes())
    return os.path.join(out, "frame_*.ppm")


def _demo(args: argparse.Namespace) -> int:
    from .session import Session

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = os.path.join(tmp, f"{args.config}.nfd")
            print(f"exporting a random {args.config} model to {model} ...", flush=True)
            rc = _export_random(argparse.Namespace(config=args.config, output=model, seed=args.seed))
            if rc:
                return rc
        with Session(model, device=args.device, dtype=args.dtype, seed=args.seed, threads=args.threads) as s:
            cfg = s.config
            print(f"session: {cfg.name} on {s.device} ({args.dtype}), {cfg.frame_width}x{cfg.frame_height} frames, "
                  f"{cfg.num_steps} steps/frame, {s.memory_bytes() / 2**20:.1f} MiB", flush=True)
            s.reset()
            frames, t0 = [], time.perf_counter()
            for i in range(args.frames):
                frames.append(s.step(scripted_action(i, cfg.action_dim)))
                if (i + 1) % 8 == 0 or i + 1 == args.frames:
                    dt = time.perf_counter() - t0
                    print(f"  frame {i + 1}/{args.frames}  {(i + 1) / dt:.2f} FPS", flush=True)
            fps = args.frames / (time.perf_counter() - t0)
    where = _write_frames(frames, args.out)
    print(f"{args.frames} frames at {fps:.2f} FPS; wrote {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nfd-rt", description="Next-Frame-Diffusion runtime")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("info", help="validate a .nfd file and print its config")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="print the config as JSON")
    q.add_argument("--tensors", action="store_true", help="list every tensor")
    q.set_defaults(fn=_info)

    q = sub.add_parser("export-random", help="write a randomly initialised model (needs torch)")
    q.add_argument("config", help="config name (tiny, nfd-130m, nfd-310m) or a config .json file")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(fn=_export_random)

    q = sub.add_parser("demo", help="export a random model, roll out frames on scripted actions, save a GIF")
    q.add_argument("--config", default="tiny")
    q.add_argument("--model", help="use this .nfd instead of exporting a random one")
    q.add_argument("--frames", type=int, default=32)
    q.add_argument("--out", default="nfd_demo")
    q.add_argument("--device", default="cpu")
    q.add_argument("--dtype", default="float32")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=0)
    q.set_defaults(fn=_demo)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"nfd-rt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
