#!/usr/bin/env python3
"""Export a trained NFD model (PyTorch state_dict or checkpoint) to a .nfd file.

    python tools/export/export.py CKPT -o model.nfd [--config tiny]

CKPT is either a plain state_dict (then --config names the architecture) or a checkpoint dict holding the
state_dict under "model" or "state_dict" and, optionally, the config under "config" (a name or a dict of
NFDConfig fields). The output loads bit-exactly with nfd_rt.export.load and runs with nfd_rt.Session.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="PyTorch .pt/.pth file: a state_dict or a checkpoint dict")
    p.add_argument("-o", "--output", required=True, help="output .nfd path")
    p.add_argument("--config", help="config name (tiny, nfd-130m, nfd-310m) when the checkpoint has none")
    args = p.parse_args(argv)

    import torch

    import nfd_rt
    from nfd_rt.configs import NFDConfig
    from nfd_rt.reference import NFDModel

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = ckpt
    cfg = None
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
        c = ckpt.get("config")
        if isinstance(c, str):
            cfg = nfd_rt.configs.get(c)
        elif isinstance(c, dict):
            cfg = NFDConfig.from_dict(c)
    if args.config:
        cfg = nfd_rt.configs.get(args.config)
    if cfg is None:
        print("error: the checkpoint carries no config; pass --config NAME", file=sys.stderr)
        return 2
    model = NFDModel(cfg, init_seed=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        print(f"error: the checkpoint does not match config {cfg.name!r}:\n{e}", file=sys.stderr)
        return 2
    nfd_rt.export.save(model, args.output)
    print(f"wrote {args.output} ({cfg.name}, {sum(t.numel() for t in state.values()) / 1e6:.2f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
