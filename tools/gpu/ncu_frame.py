"""One nfd_rt frame at a full KV cache, for Nsight Compute: the kernels to profile run inside the NVTX range
"profiled", everything before (loading, filling the cache) outside it.

    python tools/gpu/ncu_frame.py dit [config] [dtype]   # one frame's DiT (step_latent) at a full cache
    python tools/gpu/ncu_frame.py vae [config] [dtype]   # one VAE decode
    ncu --nvtx --nvtx-include "profiled/" --launch-count 60 ... python tools/gpu/ncu_frame.py dit

CUDA graphs are off so that each kernel is an ordinary launch. The cache is filled with `reset(latents=...)`
(cache-write passes only), which is faster than stepping whole frames.
"""
import sys
import tempfile

import numpy as np

import nfd_rt


def nvtx():
    """push/pop of an NVTX range (torch's binding; NVTX is process-wide, so ncu sees nfd_rt's launches in it)."""
    import torch.cuda.nvtx as n

    return n.range_push, n.range_pop


def main():
    part = sys.argv[1] if len(sys.argv) > 1 else "dit"
    name = sys.argv[2] if len(sys.argv) > 2 else "nfd-310m"
    dtype = sys.argv[3] if len(sys.argv) > 3 else "bfloat16"
    if part not in ("dit", "vae"):
        raise SystemExit("part must be 'dit' or 'vae'")
    cfg = nfd_rt.configs.get(name)
    path = tempfile.mktemp(suffix=".nfd")
    nfd_rt.export.save_random(cfg, path)
    rng = np.random.default_rng(0)
    shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    push, pop = nvtx()
    with nfd_rt.Session(path, device="cuda", dtype=dtype, cuda_graphs=False) as s:
        action = np.zeros(cfg.action_dim, np.float32)
        if part == "dit":
            s.reset(latents=rng.standard_normal((cfg.cache_frames,) + shape).astype(np.float32))
            s.step_latent(action)  # warm: the first frame at a full cache, outside the range
            push("profiled")
            s.step_latent(action)
            pop()
        else:
            latent = rng.standard_normal(shape).astype(np.float32)
            s.decode(latent)
            push("profiled")
            s.decode(latent)
            pop()
        print(f"{name} {dtype} {part}: frame index {s.frame_index}, profiled range done", flush=True)


if __name__ == "__main__":
    main()
