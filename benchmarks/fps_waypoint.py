"""fps.py for Waypoint-1.5 configs (`python benchmarks/fps.py --config waypoint-1.5-1b-360p ...`): nfd_rt against
the PyTorch baseline written as Waypoint's runtimes write it (`nfd_rt.baselines.waypoint_static`: static per-layer
K/V buffers, device-side masks, SDPA with GQA; eager, and the whole frame under one torch.compile).

What one timed frame is, for every runner: one latent frame from noise to pixels: 4 Euler passes, the commit pass
that writes the frame's K/V, and the streaming TAEHV decode of its 4 RGB frames (uint8 on the host). Reported:
latent frames/s and RGB frames/s (4 per latent).

Every timed frame sees a full cache: local layers the 15 frames before it, global layers the kept frames (every
8th) of the 127 before it (15 or 16 of them). The history is *injected*, not computed: 128 real commit passes of the
1B model would take minutes per runner on a small CPU, and the work of a frame depends on how many frames it sees,
not on what they hold. nfd_rt restores a snapshot whose frame index is `--history` (default global_window = 128)
and whose ring holds every frame a frame at that index sees, with zero K/V (the snapshot format of
docs/snapshots.md, its state zero but the decoder's); the static baseline's slot tables are set to the same
frames (it attends over its whole preallocated buffer with a mask, so its work never depends on the fill). Then
`--warmup` untimed frames (default 1: the decoder's priming, and torch.compile's compilation), then `--frames`
timed frames. Runners run one after the other (the 1B model's weights are GiBs each), each closed before the next.
`--device cuda` runs the same on the GPU (nfd_rt and the baseline in bf16 by default; the compiled baseline under
max-autotune, CUDA graphs included, unless --compile-mode says otherwise). A frame's time includes the copy of its
4 RGB frames to the host, for every runner.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


def log(msg: str) -> None:
    print(f"[fps_waypoint {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def history_frames(cfg, n: int) -> tuple[list[int], list[int]]:
    """The committed frames frame `n` sees in the local and the global layers (its cache groups 0 and 1)."""
    local = [j for j in range(max(0, n - cfg.local_window + 1), n)]
    glob = [j for j in range(max(0, n - cfg.global_window + 1), n) if j % cfg.global_stride == 0]
    return local, glob


def visible(cfg, n: int) -> dict:
    local, glob = history_frames(cfg, n)
    return {"local": len(local) + 1, "global": len(glob) + 1}


def full_cache(cfg, n: int) -> bool:
    """Every group sees as many frames as it ever does at this frame's place in the global stride."""
    return n >= cfg.global_window


def slot_bytes(cfg, dtype: str) -> tuple[int, int]:
    """Bytes of one frame in a local / global layer group's ring: K and V of every layer of the group."""
    item = 4 if dtype == "float32" else 2
    per_layer = 2 * cfg.tokens_per_frame * cfg.num_kv_heads * cfg.head_dim * item
    n_global = len(cfg.global_layers)
    return (cfg.depth - n_global) * per_layer, n_global * per_layer


def injected_snapshot(blob: bytes, cfg, dtype: str, n: int) -> bytes:
    """A snapshot of a session after reset() (no frames) -> the same session at frame index n with every frame
    that frame n sees in its rings, their K/V zero (the decoder's state kept). Same format, new CRC-32C."""
    from nfd_rt import _core

    meta_len = struct.unpack_from("<I", blob, 12)[0]
    state_len = struct.unpack_from("<Q", blob, 16)[0]
    meta = json.loads(blob[32:32 + meta_len])
    if meta["frames"]:
        raise ValueError("injected_snapshot starts from a session without frames")
    decoder = blob[32 + meta_len:32 + meta_len + state_len]
    local, glob = history_frames(cfg, n)
    sb_local, sb_global = slot_bytes(cfg, dtype)
    state = bytes(len(local) * sb_local + len(glob) * sb_global) + decoder
    meta.update(frame_index=n, frames=sorted(set(local) | set(glob)), state_bytes=len(state))
    text = json.JSONEncoder(separators=(",", ":")).encode(meta).encode()  # (fps.py writes the result JSON)
    text += b" " * ((8 - len(text) % 8) % 8)
    total = 32 + len(text) + len(state) + 4
    head = blob[:12] + struct.pack("<I", len(text)) + struct.pack("<QQ", len(state), total)
    body = head + text + state
    return body + struct.pack("<I", _core.crc32c(body))


def controls(cfg, n: int) -> np.ndarray:
    """n control vectors: mouse velocities, 0-3 held buttons, the wheel's sign (the same for every runner)."""
    rng = np.random.default_rng(0)
    out = np.zeros((n, cfg.control_dim), np.float32)
    out[:, :2] = rng.uniform(-2, 2, (n, 2))
    for i in range(n):
        out[i, 2 + rng.choice(cfg.n_buttons, int(rng.integers(0, 4)), replace=False)] = 1
    out[:, -1] = rng.integers(-1, 2, n)
    return out


@dataclass
class Runner:
    name: str
    start: Callable[[int], tuple[Callable[[np.ndarray], Any], Callable[[], None]]]  # history -> (step, close)
    info: dict = field(default_factory=dict)
    extra_warmup: int = 0  # untimed frames more (fps.CUDA_GRAPH_WARMUP: compiled calls that record CUDA graphs)


def nfd_rt_runner(path: str, dtype: str, threads: int, device: str = "cpu") -> Runner:
    def start(history: int):
        import nfd_rt

        model = nfd_rt.Model(path, device=device, dtype=dtype, threads=threads)
        s0 = model.session(seed=0)
        s0.reset()
        blob = injected_snapshot(s0.snapshot(), model.config, dtype, history)
        s0.close()
        s = model.session(snapshot=blob)
        assert s.frame_index == history

        def close():
            s.close()
            model.close() if hasattr(model, "close") else None

        return s.step, close

    backend = "CUDA backend" if device == "cuda" else "CPU backend"
    return Runner(f"nfd_rt[{device},{dtype}]", start, {"what": f"the C++ runtime (csrc/model/waypoint), {backend}"})


def static_runner(path: str, dtype: str, compile_mode: str | None, backend: str = "inductor",
                  device: str = "cpu") -> Runner:
    def start(history: int):
        import torch

        from nfd_rt.baselines.waypoint_static import WaypointStaticSession

        s = WaypointStaticSession(path, device=device, seed=0, dtype=dtype, compile_mode=compile_mode, backend=backend)
        s.reset()
        net, cfg = s.net, s.cfg
        with torch.no_grad():
            net.frame.fill_(history)
            for g in {cfg.is_global(i) for i in range(cfg.depth)}:
                layer = next(i for i in range(cfg.depth) if cfg.is_global(i) == g)
                held = [-1] * cfg.cache_slots(layer)
                for j in range(history):
                    if cfg.keeps(layer, j):
                        held[cfg.slot_for(layer, j)] = j
                getattr(net, f"slot_frame_{int(g)}").copy_(torch.tensor(held))
        s.frame_index = history  # not the first frame after a reset: no decoder priming graph

        def close():
            nonlocal s
            del s
            gc.collect()

        return s.step, close

    kind = "eager" if compile_mode is None else "compile"
    what = ("the static baseline in eager PyTorch" if compile_mode is None else
            f"the static baseline, the whole frame under one torch.compile (mode {compile_mode!r}, {backend})")
    info = {"what": what, "torch_dtype": dtype, "device": device}
    if compile_mode is not None:
        info.update(compile_mode=compile_mode, compile_backend=backend)
    from fps import CUDA_GRAPH_WARMUP

    # On a GPU the compiled frame runs as CUDA graphs (reduce-overhead, max-autotune): frames more to record them.
    graphs = compile_mode in ("reduce-overhead", "max-autotune") and device == "cuda" and backend == "inductor"
    return Runner(f"waypoint-static-{kind}[{dtype}]", start, info, extra_warmup=CUDA_GRAPH_WARMUP if graphs else 0)


def run(args, result: dict, save: Callable[[], None]) -> dict:
    import nfd_rt

    from fps import CUDA_GRAPH_WARMUP, cpu_bf16, dtype_list, load_average

    cfg = nfd_rt.configs.get(args.config)
    history = args.history if getattr(args, "history", None) is not None else cfg.global_window
    warmup = args.warmup if args.warmup is not None else 1
    result.update({"config": cfg.to_dict(), "steps": cfg.num_steps, "history_frames": history,
                   "history": "injected (zero K/V in every slot a frame sees; see benchmarks/fps_waypoint.py)",
                   "warmup": warmup, "frames_per_latent": cfg.frames_per_latent, "runners": {},
                   "timed_frame": "one latent: 4 Euler passes + the commit pass + the TAEHV decode of its 4 RGB "
                                  "frames to uint8 on the host"})
    path = getattr(args, "model_file_in", None)
    if path is None:
        import torch

        from nfd_rt import export
        from nfd_rt.reference.waypoint import WaypointModel

        torch.set_num_threads(args.threads)
        log(f"building random {cfg.name} weights ...")
        model = WaypointModel(cfg, init_seed=0).eval()
        path = os.path.join(args.work_dir, f"{cfg.name}.nfd")
        export.save(model, path)
        del model
        gc.collect()
    result["model_file_bytes"] = os.path.getsize(path)
    ctrl = controls(cfg, warmup + CUDA_GRAPH_WARMUP + args.frames)  # room for a runner's extra_warmup
    device = getattr(args, "device", "cpu")
    if args.dtype:
        dtypes = [args.dtype]
    elif device == "cuda":
        dtypes = ["bfloat16"]
    else:
        dtypes = ["bfloat16", "float32"] if cpu_bf16() else ["float32"]
    torch_dtypes = dtype_list(args.torch_dtypes)
    runners = [nfd_rt_runner(path, d, args.threads, device) for d in dtypes]
    if not args.skip_baselines:
        runners += [static_runner(path, d, None, device=device) for d in torch_dtypes]
        if args.compile_mode != "none":
            # The whole frame under torch.compile: Waypoint's runtimes use CUDA graphs on a GPU (max-autotune
            # captures them); on the CPU Inductor's default mode (autotuning GEMMs there takes long on 2 cores).
            mode = args.compile_mode or ("max-autotune" if device == "cuda" else "default")
            runners += [static_runner(path, d, mode, args.compile_backend, device)
                        for d in dtype_list(args.compile_dtypes or args.torch_dtypes)]
    if args.runners:
        keep = args.runners.split(",")
        runners = [r for r in runners if any(r.name.startswith(k) for k in keep)]
    try:
        import torch

        torch.set_num_threads(args.threads)
        result["torch"] = torch.__version__
    except ImportError:
        pass
    for r in runners:
        log(f"{r.name}: setting up (history of {history} frames) ...")
        entry: dict = {**r.info, "load_average_before": load_average()}
        try:
            t0 = time.perf_counter()
            step, close = r.start(history)
            entry["setup_s"] = round(time.perf_counter() - t0, 2)
            warm_ms, ms, vis = [], [], []
            untimed = warmup + (r.extra_warmup if args.warmup is None else 0)
            for i in range(untimed + args.frames):
                n = history + i
                t0 = time.perf_counter()
                out = step(ctrl[i])
                dt = (time.perf_counter() - t0) * 1e3
                assert out.shape == (cfg.frames_per_latent, *cfg.video_size, 3), out.shape
                if i < untimed:
                    warm_ms.append(round(dt, 1))
                    log(f"  {r.name}: warm-up frame {i + 1}/{untimed}: {dt / 1e3:.2f} s")
                else:
                    ms.append(dt)
                    vis.append({"frame_index": n, **visible(cfg, n), "full_cache": full_cache(cfg, n)})
                    log(f"  {r.name}: timed frame {len(ms)}/{args.frames}: {dt / 1e3:.2f} s")
            close()
            del step, close, out  # the runner's weights go before the next runner's load
            gc.collect()
            t = np.asarray(ms)
            entry.update({"frames": len(ms), "ms": [round(float(x), 1) for x in t], "ms_mean": float(t.mean()),
                          "ms_p50": float(np.median(t)), "ms_p99": float(np.percentile(t, 99)),
                          "latent_fps": 1e3 / float(t.mean()), "fps": 1e3 / float(t.mean()),
                          "rgb_fps": cfg.frames_per_latent * 1e3 / float(t.mean()), "warmup_ms": warm_ms,
                          "visible_frames": vis, "full_cache": all(v["full_cache"] for v in vis),
                          "load_average_after": load_average()})
            log(f"  {r.name}: {entry['latent_fps']:.3g} latent frames/s, {entry['rgb_fps']:.3g} RGB frames/s")
        except Exception as e:  # noqa: BLE001 - report and go on with the other runners
            log(f"  {r.name} failed: {type(e).__name__}: {e}")
            entry["error"] = f"{type(e).__name__}: {e}"
        result["runners"][r.name] = entry
        ratios(result)
        save()
        gc.collect()
    return result


def ratios(result: dict) -> None:
    """nfd_rt's frames/s over each baseline's of the same dtype; and the fastest nfd_rt runner over the fastest
    baseline of the run, whatever their dtypes (strongest_baseline, ratio_vs_strongest_baseline), as fps.py."""
    rs = result["runners"]
    out = {}
    for name, r in rs.items():
        if not name.startswith("waypoint-static") or "fps" not in r:
            continue
        dtype, device = r["torch_dtype"], r.get("device", "cpu")
        ours = rs.get(f"nfd_rt[{device},{dtype}]", {})
        if "fps" in ours:
            out[f"nfd_rt[{device},{dtype}] / {name}"] = ours["fps"] / r["fps"]
    result["ratios"] = out
    from fps import best_and_strongest

    best, strongest = best_and_strongest(rs)
    if best and strongest:
        result.update(best=best, strongest_baseline=strongest,
                      ratio_vs_strongest_baseline=rs[best]["fps"] / rs[strongest]["fps"])
