"""Where a frame's time goes, from outside: step_latent (DiT only), step (DiT + decode) and a standalone decode,
with and without CUDA graphs, each timed at a full KV cache.

Every timing starts from the same state: reset, then `sink_frames + window + 1` untimed frames so the cache is
full, then the timed calls. (The first version of this script timed step_latent and then step on one session
without a reset, so the two saw different cache sizes: the "~88 ms lost inside a frame" it reported on the H100
was the cost of the extra visible frames, not of the decode.) `benchmarks/fps.py --curve` gives the whole
picture of time against visible frames.

    python tools/gpu/timing_split.py [config] [dtype] [device]     # defaults: nfd-310m bfloat16 cuda
"""
import sys
import tempfile
import time

import numpy as np

import nfd_rt


def timed(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "nfd-310m"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "bfloat16"
    device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
    n = 10
    cfg = nfd_rt.configs.get(name)
    path = tempfile.mktemp(suffix=".nfd")
    nfd_rt.export.save_random(cfg, path)
    action = np.zeros(cfg.action_dim, np.float32)
    fill = cfg.cache_frames + 1
    for graphs in ((True, False) if device == "cuda" else (False,)):
        with nfd_rt.Session(path, device=device, dtype=dtype, cuda_graphs=graphs) as s:

            def full_cache():
                s.reset()
                for _ in range(fill):
                    s.step(action)
                assert s.frame_index >= cfg.cache_frames  # every later frame sees sinks + window + itself

            full_cache()
            latent = s.step_latent(action)
            full_cache()
            t_latent = timed(lambda: s.step_latent(action), n)
            full_cache()
            t_step = timed(lambda: s.step(action), n)
            t_decode = timed(lambda: s.decode(latent), n)
            print(f"{name} {dtype} {device} cuda_graphs={graphs}, full cache ({cfg.cache_frames + 1} visible frames), "
                  f"{n} calls each: step_latent {t_latent:.2f} ms, step {t_step:.2f} ms, decode alone "
                  f"{t_decode:.2f} ms; step - (step_latent + decode) = {t_step - t_latent - t_decode:+.2f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
