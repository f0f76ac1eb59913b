"""A few frames of a CUDA session (tiny config) for compute-sanitizer: every kernel of a frame runs."""
import tempfile

import numpy as np

import nfd_rt

cfg = nfd_rt.configs.get("tiny")
path = tempfile.mktemp(suffix=".nfd")
nfd_rt.export.save_random(cfg, path)
for dtype in ("float32", "bfloat16"):
    with nfd_rt.Session(path, device="cuda", dtype=dtype, seed=0) as s:
        s.reset(np.zeros((2, 64, 64, 3), np.uint8))
        for i in range(12):
            frame = s.step(np.full(cfg.action_dim, 0.1 * i, np.float32))
        print(dtype, frame.shape, frame.mean())
