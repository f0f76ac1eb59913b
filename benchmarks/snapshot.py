#!/usr/bin/env python3
"""Snapshot and restore: time and size per config, at a full cache (docs/snapshots.md).

    python benchmarks/snapshot.py                                  # tiny, nfd-130m, nfd-310m; CPU float32
    python benchmarks/snapshot.py --configs tiny --repeats 9 --threads 2
    python benchmarks/snapshot.py --markdown-from benchmarks/results/snapshot_cpu_<date>.json

For each config a model with random weights (written with numpy, no PyTorch) is loaded once; one session is filled
to a full cache (sink_frames + window context latents through `reset`, so every slot the next frame sees holds a
frame), then, each the median of --repeats runs:
  - snapshot: `session.snapshot()` (the device-to-host copy of the visible K/V, the metadata, the CRC-32C);
  - restore: `model.session(snapshot=blob)` (open a session, check the blob, copy the K/V in), and beside it
    `model.session()` alone, so the part the snapshot adds is visible;
  - crc32c: the CRC-32C of the whole blob alone (computed once on save and once on restore).
The blob's size is exact. Restored sessions are checked to continue bitwise (one latent) on `tiny` only: the
other configs take seconds a frame on a CPU, and tests/runtime/test_snapshot.py covers the semantics.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_random_nfd(cfg, path: str, seed: int = 0) -> None:
    """A valid .nfd file for `cfg` with random fan-in-scaled weights, streamed tensor by tensor (a 310m file is
    1.2 GB: never all in memory)."""
    from nfd_rt import _core

    rng = np.random.default_rng(seed)
    tensors = _core.expected_tensors(cfg.to_json())
    header: dict = {"__metadata__": {"nfd_format_version": "1", "config": cfg.to_json()}}
    offset = 0
    for name, shape in tensors:
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in tensors:
            if len(shape) == 1:
                a = (1.0 if ("norm" in name and name.endswith("weight")) else 0.0) + 0.05 * rng.standard_normal(shape)
            else:
                a = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
            f.write(a.astype("<f4").tobytes())


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - t0))
        del out
    return statistics.median(times), times


def bench_config(name: str, workdir: str, repeats: int, threads: int, device: str, dtype: str) -> dict:
    import nfd_rt
    from nfd_rt import _core, configs

    cfg = configs.get(name)
    path = os.path.join(workdir, f"{name}.nfd")
    t0 = time.perf_counter()
    write_random_nfd(cfg, path)
    log(f"{name}: random weights written ({os.path.getsize(path) / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s)")
    model = nfd_rt.Model(path, device=device, dtype=dtype, threads=threads)
    s = model.session(seed=1)
    full = cfg.sink_frames + cfg.window
    latents = np.random.default_rng(0).standard_normal(
        (full, cfg.latent_channels, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    t0 = time.perf_counter()
    s.reset(latents=latents)
    log(f"{name}: cache filled with {full} context frames ({time.perf_counter() - t0:.0f} s)")
    blob = s.snapshot()
    info = nfd_rt.snapshot_info(blob)
    assert len(info["frames"]) == full, info["frames"]

    snap_ms, snap_all = median_ms(s.snapshot, repeats)
    log(f"{name}: snapshot {snap_ms:.1f} ms ({len(blob) / 2**20:.1f} MiB)")
    open_ms, open_all = median_ms(lambda: model.session(seed=1), repeats)
    restore_ms, restore_all = median_ms(lambda: model.session(snapshot=blob), repeats)
    log(f"{name}: restore {restore_ms:.1f} ms (a session alone opens in {open_ms:.1f} ms)")
    crc_ms, _ = median_ms(lambda: _core.crc32c(blob), repeats)

    row = {"config": name, "frames_saved": full, "blob_bytes": len(blob), "state_bytes": info["state_bytes"],
           "metadata_bytes": len(blob) - info["state_bytes"] - 36, "kv_cache_bytes": s.kv_cache_bytes(),
           "snapshot_ms": snap_ms, "restore_ms": restore_ms, "open_ms": open_ms, "crc32c_ms": crc_ms,
           "snapshot_gb_s": len(blob) / snap_ms / 1e6, "restore_gb_s": len(blob) / restore_ms / 1e6,
           "snapshot_ms_all": snap_all, "restore_ms_all": restore_all, "open_ms_all": open_all}
    if name == "tiny":  # cheap enough to check the restored session continues bitwise
        a = np.eye(cfg.action_dim, dtype=np.float32)[0]
        row["restored_bitwise"] = bool(np.array_equal(model.session(snapshot=blob).step_latent(a), s.step_latent(a)))
    s.close()
    del model, blob
    gc.collect()
    os.remove(path)
    return row


def markdown(result: dict) -> str:
    env = result["environment"]
    out = [f"Snapshot and restore, {result['device']} {result['dtype']}, {result['threads']} thread(s), "
           f"{env.get('cpu', '')}, commit `{env.get('commit', '?')[:10]}`, {env['date'][:10]}; median of "
           f"{result['repeats']} runs at a full cache:", "",
           "| config | frames saved | blob | snapshot ms | restore ms | open alone ms | CRC-32C ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        size = r["blob_bytes"]
        size_s = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
        out.append(f"| `{r['config']}` | {r['frames_saved']} | {size_s} | {r['snapshot_ms']:.1f} | "
                   f"{r['restore_ms']:.1f} | {r['open_ms']:.1f} | {r['crc32c_ms']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,nfd-130m,nfd-310m")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = physical cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", help="JSON path (default benchmarks/results/snapshot_<device>_<date>.json)")
    p.add_argument("--markdown-from", help="print the table of a result JSON and exit")
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    from nfd_rt import _core

    threads = args.threads or _core.default_threads()
    sys.path.insert(0, str(HERE))
    from common import result_header  # benchmarks/common.py

    result = {**result_header("snapshot", args.device), "device": args.device, "dtype": args.dtype,
              "threads": threads, "repeats": args.repeats, "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.configs.split(","):
            result["rows"].append(bench_config(name, workdir, args.repeats, threads, args.device, args.dtype))
    out = Path(args.out or HERE / "results" / f"snapshot_{args.device}_{_dt.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
