"""Where a CUDA frame's time goes, from outside: step_latent (DiT only), step (DiT + decode in one graph) and a
standalone decode, with and without CUDA graphs. On the H100 (session 1) a decoding step cost ~88 ms more than
step_latent + decode; this prints the same split so a fix can be checked in one run.

    python tools/gpu/timing_split.py [config] [dtype]     # defaults: nfd-310m bfloat16
"""
import sys
import tempfile
import time

import numpy as np

import nfd_rt


def timed(fn, n=10, warmup=3):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "nfd-310m"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "bfloat16"
    cfg = nfd_rt.configs.get(name)
    path = tempfile.mktemp(suffix=".nfd")
    nfd_rt.export.save_random(cfg, path)
    action = np.zeros(cfg.action_dim, np.float32)
    for graphs in (True, False):
        with nfd_rt.Session(path, device="cuda", dtype=dtype, cuda_graphs=graphs) as s:
            latent = s.step_latent(action)
            t_latent = timed(lambda: s.step_latent(action))
            t_step = timed(lambda: s.step(action))
            t_decode = timed(lambda: s.decode(latent))
            print(f"{name} {dtype} cuda_graphs={graphs}: step_latent {t_latent:.2f} ms, step {t_step:.2f} ms, "
                  f"decode alone {t_decode:.2f} ms; step - (step_latent + decode) = "
                  f"{t_step - t_latent - t_decode:+.2f} ms")


if __name__ == "__main__":
    main()
