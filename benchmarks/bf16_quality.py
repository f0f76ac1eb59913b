#!/usr/bin/env python3
"""How far bf16 frames drift from fp32 ones: nfd_rt's CPU (or CUDA) session in bfloat16 against the same session in
float32, stepped in lockstep (same weights, seed and actions) over a rollout long enough for the window to roll.

    python benchmarks/bf16_quality.py --config nfd-130m --frames 64 --threads 2
    python benchmarks/bf16_quality.py --model python/nfd_rt/demo/gridworld.nfd --frames 64 --torch

Per frame: the PSNR of the bf16 frame against the fp32 one (uint8 pixels, peak 255; identical frames count as
99 dB) and the relative L2 error of the latent. Weights are random (NFDModel(cfg, init_seed=0), not adaLN-Zero,
as fps.py) unless --model names a file. --torch adds the same comparison for the static PyTorch session
(nfd_rt.baselines.static) in bf16 against fp32: the drift a user's own bf16 PyTorch session has. Writes JSON under
benchmarks/results/ (never over an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fps  # noqa: E402  (progress lines)
from common import result_header  # noqa: E402  (benchmarks/common.py)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def lockstep(make, frames: int, actions: np.ndarray) -> dict:
    """Steps the float32 and bfloat16 sessions `make(dtype)` side by side; per-frame PSNR and latent error."""
    f32, b16 = make("float32"), make("bfloat16")
    out = {"psnr_db": [], "latent_rel_l2": [], "seconds": {"float32": 0.0, "bfloat16": 0.0}}
    for i in range(frames):
        got = {}
        for name, s in (("float32", f32), ("bfloat16", b16)):
            t0 = time.perf_counter()
            lat = np.asarray(s.step_latent(actions[i]), np.float64)
            img = np.asarray(s.decode(lat.astype(np.float32))) if hasattr(s, "decode") else None
            out["seconds"][name] += time.perf_counter() - t0
            got[name] = (lat, img)
        (la, ia), (lb, ib) = got["float32"], got["bfloat16"]
        out["latent_rel_l2"].append(float(np.linalg.norm(lb - la) / max(np.linalg.norm(la), 1e-30)))
        if ia is not None:
            out["psnr_db"].append(round(psnr(ia, ib), 3))
        if (i + 1) % 8 == 0 or i + 1 == frames:  # minutes a frame pair at nfd-130m: say where the rollout is
            last = f", PSNR {out['psnr_db'][-1]:.1f} dB" if out["psnr_db"] else ""
            fps.log(f"frame {i + 1}/{frames}: latent rel. L2 {out['latent_rel_l2'][-1]:.2e}{last}")
    for s in (f32, b16):
        if hasattr(s, "close"):
            s.close()
    p = out["psnr_db"]
    if p:
        out["psnr_db_min"], out["psnr_db_mean"] = min(p), float(np.mean(p))
    out["latent_rel_l2_max"] = max(out["latent_rel_l2"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config of the random weights (default tiny)")
    p.add_argument("--model", help="a .nfd file instead of random weights (e.g. the shipped demo model)")
    p.add_argument("--frames", type=int, default=64, help="frames of the rollout (default 64)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=fps.default_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch", action="store_true", help="also the static PyTorch session, bf16 against fp32")
    p.add_argument("--out", help="JSON output (refused if it exists)")
    args = p.parse_args(argv)

    import nfd_rt

    work = tempfile.mkdtemp(prefix="nfd_bf16q_")
    if args.model:
        path = args.model
        cfg = nfd_rt.export.read_header(path)[1]
    else:
        cfg = nfd_rt.configs.get(args.config)
        path = os.path.join(work, f"{cfg.name}.nfd")
        if args.torch:
            from nfd_rt.reference import NFDModel

            nfd_rt.export.save(NFDModel(cfg, init_seed=0).eval(), path)
        else:
            nfd_rt.export.save_random(cfg, path)
    actions = np.random.default_rng(args.seed).standard_normal((args.frames, cfg.action_dim)).astype(np.float32)

    class Rt:  # a session whose step_latent is followed by decode (the frame of that latent)
        def __init__(self, dtype):
            self.s = nfd_rt.Session(path, device=args.device, dtype=dtype, seed=args.seed, threads=args.threads)
            self.s.reset()

        def step_latent(self, a):
            return self.s.step_latent(a)

        def decode(self, latent):
            return self.s.decode(latent)

        def close(self):
            self.s.close()

    result = {**result_header("bf16_quality", args.device), "config": cfg.to_dict(),
              "model": os.path.basename(args.model) if args.model else "random (init_seed=0)",
              "frames": args.frames, "device": args.device, "threads": args.threads, "cache_frames": cfg.cache_frames}
    result["nfd_rt"] = lockstep(Rt, args.frames, actions)
    fps.log(f"nfd_rt bf16 vs fp32: PSNR min {result['nfd_rt'].get('psnr_db_min')} dB, mean "
            f"{result['nfd_rt'].get('psnr_db_mean')} dB over {args.frames} frames")
    if args.torch:
        import torch

        from nfd_rt.baselines.static import StaticSession
        from nfd_rt.nfd_file import load

        torch.set_num_threads(args.threads)
        model = load(path)

        class St:
            def __init__(self, dtype):
                self.s = StaticSession(model, device=args.device, seed=args.seed, dtype=dtype)
                self.s.reset()
                self.last = None

            def step_latent(self, a):
                self.last = self.s.step(a)
                return np.zeros(1, np.float32)  # frames only: the static session returns decoded frames

            def decode(self, latent):
                return self.last

        result["torch_static"] = lockstep(St, args.frames, actions)
        fps.log(f"torch-static bf16 vs fp32: PSNR min {result['torch_static'].get('psnr_db_min')} dB")
    name = args.out or str(HERE / "results" / f"bf16_quality_{cfg.name}_{args.device}_"
                                                f"{result['environment']['date'][:10]}.json")
    if os.path.exists(name):
        raise SystemExit(f"{name} exists: pass --out")
    Path(name).write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    fps.log(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
