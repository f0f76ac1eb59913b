#!/usr/bin/env python3
"""Per-op micro-benchmark: every op of one frame, on the shapes of a config at a full KV cache.

    python benchmarks/ops.py --config tiny --device cpu --threads 1
    python benchmarks/ops.py --config nfd-310m --device cuda --dtype bfloat16

For each op call of a frame (csrc/model: the DiT passes, the cache-write pass and the VAE decode) it times the
runtime's op through `nfd_rt._core.ops` (inputs uploaded once; `set_timing` repeats the op alone, on CUDA as a
captured graph of back-to-back calls) and reports time per call, calls per frame, achieved TFLOP/s and GB/s,
and the fraction of the roofline: max(FLOPs / peak FLOP/s, bytes / peak bandwidth) over the measured time.
On CUDA (bf16/fp16) the implementation switches are timed side by side: a linear under both GEMM engines
(CUTLASS, cuBLASLt; a session keeps the faster per shape, so the row reports the faster), attention under
ours (128 query rows), ours with 64 rows and FlashInfer, and the convolutions under the implicit GEMM and the
former im2col engine (these rows report the default); `engines` / `impls` hold each one's time and the
kernel that ran.
Bytes are the fewest an op must move (each input read once, each output written once). The ceilings are
measured in the same run: a large matrix product and a large copy through PyTorch on CUDA; on the CPU a
512x1024x1024 GEMM through nfd_rt's OpenBLAS (as fps.py) and a large numpy copy. With PyTorch installed, the same
shapes through PyTorch (cuBLAS, cuDNN, flash SDPA on CUDA; oneDNN/MKL on the CPU) are timed beside each heavy op
as a peer. The table's list of a frame's calls (op, output shape, calls per frame) is checked against the runtime's
own count (the ops' dispatcher counts every call while a session makes a frame: nfd_rt._core.op_trace_*): the JSON
says whether they match and lists any difference. Writes JSON (a new file, never over an existing one) and prints
a table sorted by time per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fps  # noqa: E402  (environment, CPU GEMM peak)

log = fps.log


@dataclass
class OpCase:
    """One op at one shape: how to call it, how often a frame calls it, and its FLOPs and minimal bytes."""

    name: str  # op name and shape, e.g. "linear qkv 336x1024->3072"
    op: str  # the nfd_rt._core.ops function
    calls_per_frame: int
    flops: float
    bytes_moved: float  # at the benchmark dtype
    run: Callable[[Any, dict], Any]  # run(ops, common kwargs)
    peer: Callable[[Any, Any, Any], Callable[[], Any]] | None = None  # peer(torch, device, dtype) -> fn
    extra: dict = field(default_factory=dict)


def rnd(*shape, scale=1.0, seed=[0]):  # noqa: B006 - a counter: fresh random inputs for every case
    seed[0] += 1
    return (np.random.default_rng(seed[0]).standard_normal(shape) * scale).astype(np.float32)


def runtime_frame_calls(cfg, device: str, dtype: str, threads: int) -> dict[tuple, int]:
    """The op calls of one frame (with decode) as the runtime makes them: {(op, output shape): calls}, counted by
    the ops' dispatcher (nfd_rt._core.op_trace_*) while a session of `cfg` (random weights) generates a frame.
    A frame's calls do not depend on how full the cache is, so the first frame is traced."""
    import tempfile

    import nfd_rt
    from nfd_rt import _core

    with tempfile.TemporaryDirectory(prefix="nfd_ops_") as tmp:
        path = os.path.join(tmp, "m.nfd")
        nfd_rt.export.save_random(cfg, path)
        with nfd_rt.Session(path, device=device, dtype=dtype, threads=threads, cuda_graphs=False) as s:
            _core.op_trace_begin()
            try:
                s.step(np.zeros(cfg.action_dim, np.float32))
            finally:
                calls = _core.op_trace_end()
    return {(op, tuple(shape)): n for op, shape, n in calls}


def check_frame_calls(cases: list, out_shapes: dict, reported: dict) -> list[str]:
    """Differences between this benchmark's list of a frame's op calls and the runtime's (by op and output
    shape): empty when the table covers exactly what a frame runs."""
    mine: dict[tuple, int] = {}
    for case in cases:
        key = (case.op, out_shapes.get(case.name))
        mine[key] = mine.get(key, 0) + case.calls_per_frame
    diffs = []
    for key in sorted(set(mine) | set(reported), key=str):
        if mine.get(key, 0) != reported.get(key, 0):
            diffs.append(f"{key[0]} -> {list(key[1]) if key[1] else '?'}: this table {mine.get(key, 0)} calls a "
                         f"frame, the runtime {reported.get(key, 0)}")
    return diffs


def frame_cases(cfg, b: int) -> list[OpCase]:
    """Every op call of one frame at a full cache; b = bytes per value of the benchmark dtype. The list is checked
    against the runtime's own count of a frame's calls (runtime_frame_calls, check_frame_calls)."""
    D, N, H, hd = cfg.hidden_size, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim
    F, P, A, L = cfg.mlp_ratio * cfg.hidden_size, cfg.patch_dim, cfg.action_dim, cfg.depth
    steps, passes = cfg.num_steps, cfg.num_steps + 1
    slots = cfg.cache_frames + 1  # sinks + window + the frame's own slot, all visible at a full cache
    keys = slots * N
    full_layers = steps * L + (L - 1)  # the cache-write pass stops after the last layer's K/V
    cases: list[OpCase] = []

    def linear(label, M, K, Nout, count, epilogue="none"):
        x, w, bias = rnd(M, K), rnd(Nout, K, scale=K ** -0.5), rnd(Nout, scale=0.02)
        extra_in = {}
        byts = (M * K + Nout * K + Nout + M * Nout) * b
        if epilogue == "gated_residual":
            extra_in = {"gate": rnd(Nout), "y": rnd(M, Nout)}
            byts += (M * Nout + Nout) * b

        def peer(torch, dev, dt):
            tx, tw, tb = (torch.from_numpy(a).to(dev, dt) for a in (x, w, bias))
            if epilogue == "gelu_tanh":
                return lambda: torch.nn.functional.gelu(torch.nn.functional.linear(tx, tw, tb), approximate="tanh")
            if epilogue == "gated_residual":
                tg, ty = (torch.from_numpy(extra_in[k]).to(dev, dt) for k in ("gate", "y"))
                return lambda: ty.add_(tg * torch.nn.functional.linear(tx, tw, tb))
            return lambda: torch.nn.functional.linear(tx, tw, tb)

        cases.append(OpCase(f"linear {label} {M}x{K}->{Nout}" + (f" +{epilogue}" if epilogue != "none" else ""),
                            "linear", count, 2.0 * M * K * Nout, byts,
                            lambda ops, kw: ops.linear(x, w, bias, epilogue=epilogue, **extra_in, **kw), peer))

    def attention(count):
        q, kc, vc = rnd(H, N, hd), rnd(slots, N, H, hd), rnd(slots, N, H, hd)  # token-major caches, as sessions

        def peer(torch, dev, dt):
            tq = torch.from_numpy(q).to(dev, dt)[None]  # [1, H, N, hd]
            tk = torch.from_numpy(kc).to(dev, dt).permute(2, 0, 1, 3).reshape(1, H, keys, hd)
            tv = torch.from_numpy(vc).to(dev, dt).permute(2, 0, 1, 3).reshape(1, H, keys, hd)
            return lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

        cases.append(OpCase(f"attention {H}x{N}x{hd} over {keys} keys", "attention", count,
                            4.0 * N * keys * D, (2 * N * D + 2 * keys * D) * b,
                            lambda ops, kw: ops.attention(q, kc, vc, list(range(slots)), **kw), peer))

    def layernorm_modulate(count):
        x, sh, sc = rnd(N, D), rnd(D, scale=0.1), rnd(D, scale=0.1)
        cases.append(OpCase(f"layernorm_modulate {N}x{D}", "layernorm_modulate", count, 8.0 * N * D,
                            (2 * N * D + 2 * D) * b, lambda ops, kw: ops.layernorm_modulate(x, sh, sc, **kw)))

    def gated_add_layernorm_modulate(count):  # a branch's gated residual folded into the norm after it
        x, g, y, sh, sc = rnd(N, D), rnd(D, scale=0.1), rnd(N, D), rnd(D, scale=0.1), rnd(D, scale=0.1)
        cases.append(OpCase(f"gated_add_layernorm_modulate {N}x{D}", "gated_add_layernorm_modulate", count,
                            10.0 * N * D, (4 * N * D + 3 * D) * b,
                            lambda ops, kw: ops.gated_add_layernorm_modulate(x, g, y, sh, sc, **kw)))

    # Conditioning: the action MLP, then every pass position's adaLN vectors in one GEMM per layer.
    linear("action fc1", 1, A, D, 1)
    linear("action fc2", 1, D, D, 1)
    linear("adaLN (all passes)", passes, D, 6 * D, L)
    linear("final adaLN (all passes)", passes, D, 2 * D, 1)
    a, bb = rnd(D), rnd(D)
    cases.append(OpCase(f"add_silu {D}", "add_silu", passes + 1, 4.0 * D, 3 * D * b,
                        lambda ops, kw: ops.add_silu(a, bb, **kw)))
    # The DiT passes.
    lat = rnd(cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    cases.append(OpCase(f"patchify {N}x{P}", "patchify", passes, 0.0, 2 * N * P * b,
                        lambda ops, kw: ops.patchify(lat, cfg.patch_size, **kw)))
    linear("patch_embed", N, P, D, passes)
    # Each pass's first norm has no residual before it; every other norm takes the gated residual of the branch
    # (proj or fc2) before it: the next block's first norm, the block's second, the final layer's.
    layernorm_modulate(passes)
    gated_add_layernorm_modulate(2 * full_layers + 1 + steps - passes)
    linear("qkv", N, D, 3 * D, passes * L)
    qkv = rnd(N, 3 * D)
    cases.append(OpCase(f"rope_qkv_split {N}x{3 * D}", "rope_qkv_split", passes * L, 6.0 * N * 2 * D,
                        2 * N * 3 * D * b,
                        lambda ops, kw: ops.rope_qkv_split(qkv, cfg.cache_frames, list(cfg.rope_dims), cfg.rope_theta,
                                                           cfg.grid[1], H, **kw)))
    attention(full_layers)
    linear("proj", N, D, D, full_layers)  # the gated residual: in the next norm
    linear("fc1", N, D, F, full_layers, "gelu_tanh")
    linear("fc2", N, F, D, full_layers)
    linear("final", N, D, P, steps)
    tok = rnd(N, P)
    cases.append(OpCase(f"unpatchify_axpy {N}x{P}", "unpatchify_axpy", steps, 2.0 * N * P, 3 * N * P * b,
                        lambda ops, kw: ops.unpatchify_axpy(tok, cfg.patch_size, -0.25, lat, **kw)))
    n_lat = lat.size
    cases.append(OpCase(f"noise_mix {n_lat}", "noise_mix", 2, 30.0 * n_lat, 2 * n_lat * b,
                        lambda ops, kw: ops.noise_mix(0, cfg.cache_frames, cfg.num_steps, 0.98, lat, 0.02, **kw)))

    # The VAE decoder (model/vae.cc), one call per conv / norm of each level.
    v, ch = cfg.vae, cfg.vae.channels
    h, w = cfg.latent_height, cfg.latent_width
    conv_counts: dict[tuple, int] = {}
    norm_counts: dict[tuple, int] = {}

    def conv(cin, cout, k, hh, ww, residual=False, up=False):
        key = (cin, cout, k, hh, ww, residual, up)
        conv_counts[key] = conv_counts.get(key, 0) + 1

    conv(cfg.latent_channels, ch[-1], 3, h, w)
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for _ in range(v.num_res_blocks):
            norm_counts[(cin, h, w)] = norm_counts.get((cin, h, w), 0) + 1
            conv(cin, ch[i], 3, h, w)
            norm_counts[(ch[i], h, w)] = norm_counts.get((ch[i], h, w), 0) + 1
            if cin != ch[i]:
                conv(cin, ch[i], 1, h, w)
            conv(ch[i], ch[i], 3, h, w, residual=True)
            cin = ch[i]
        if i > 0:
            conv(cin, cin, 3, h, w, up=True)
            h, w = 2 * h, 2 * w
    norm_counts[(ch[0], h, w)] = norm_counts.get((ch[0], h, w), 0) + 1
    conv(ch[0], 3, 3, h, w)

    for (cin, cout, k, hh, ww, residual, up), count in conv_counts.items():
        x, wt, bias = rnd(cin, hh, ww), rnd(cout, cin, k, k, scale=(cin * k * k) ** -0.5), rnd(cout, scale=0.02)
        ho, wo = (2 * hh, 2 * ww) if up else (hh, ww)
        res = rnd(cout, ho, wo) if residual else None
        byts = (cin * hh * ww + cout * cin * k * k + cout + cout * ho * wo * (2 if residual else 1)) * b

        def run(ops, kw, x=x, wt=wt, bias=bias, res=res, up=up, k=k):
            if up:
                return ops.upsample2x_conv2d(x, wt, bias, **kw)
            return ops.conv2d(x, wt, bias, 1, k // 2, res, **kw)

        def peer(torch, dev, dt, x=x, wt=wt, bias=bias, res=res, up=up, k=k):
            tx, tw, tb = (torch.from_numpy(a).to(dev, dt)[None] if a.ndim == 3 else torch.from_numpy(a).to(dev, dt)
                          for a in (x, wt, bias))
            tr = torch.from_numpy(res).to(dev, dt)[None] if res is not None else None
            f = torch.nn.functional
            if up:
                return lambda: f.conv2d(f.interpolate(tx, scale_factor=2, mode="nearest"), tw, tb, padding=1)
            if tr is not None:
                return lambda: f.conv2d(tx, tw, tb, padding=k // 2) + tr
            return lambda: f.conv2d(tx, tw, tb, padding=k // 2)

        label = (("upsample2x_conv2d" if up else "conv2d") + f" {cin}->{cout} k{k} {ho}x{wo}"
                 + (" +res" if residual else ""))
        cases.append(OpCase(label, "upsample2x_conv2d" if up else "conv2d", count,
                            2.0 * cin * cout * k * k * ho * wo, byts, run, peer))
    for (c, hh, ww), count in norm_counts.items():
        x, g, bt = rnd(c, hh, ww), 1 + rnd(c, scale=0.1), rnd(c, scale=0.1)

        def peer(torch, dev, dt, x=x, g=g, bt=bt, c=c):
            tx, tg, tb = (torch.from_numpy(a).to(dev, dt) for a in (x, g, bt))
            return lambda: torch.nn.functional.silu(torch.nn.functional.group_norm(tx[None], v.norm_groups, tg, tb))

        cases.append(OpCase(f"groupnorm+silu {c}x{hh}x{ww}", "groupnorm", count, 10.0 * c * hh * ww,
                            2 * c * hh * ww * b,
                            lambda ops, kw, x=x, g=g, bt=bt: ops.groupnorm(x, g, bt, v.norm_groups, v.norm_eps, True,
                                                                           **kw), peer))
    img = np.tanh(rnd(3, cfg.frame_height, cfg.frame_width))
    cases.append(OpCase(f"to_uint8 3x{cfg.frame_height}x{cfg.frame_width}", "to_uint8", 1, 0.0,
                        3 * cfg.frame_height * cfg.frame_width * (b + 1), lambda ops, kw: ops.to_uint8(img, **kw)))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Timing


def time_op(ops, case: OpCase, kw: dict, target_s: float, samples: int) -> list[float]:
    """Seconds per call of each timed batch (set_timing: inputs uploaded once, the op alone repeated)."""
    ops.set_timing(1, 1, 1)
    try:
        case.run(ops, kw)
        est = max(ops.last_times()[0], 1e-7)
        repeat = int(min(200, max(1, target_s / est)))
        ops.set_timing(repeat, 2, samples)
        case.run(ops, kw)
        return list(ops.last_times())
    finally:
        ops.set_timing(0)


# The implementation switches a CUDA session reads per call, timed side by side. A session picks the faster GEMM
# engine per shape at open (ops::linear_prepare); attention runs its default unless an environment variable says.
LINEAR_ENGINES = {"cutlass": {"NFD_RT_GEMM": "cutlass"}, "cublaslt": {"NFD_RT_GEMM": "cublaslt"}}
ATTENTION_IMPLS = {"ours": {}, "ours rows=64": {"NFD_RT_ATTENTION_ROWS": "64"},
                   "ours 64x128": {"NFD_RT_ATTENTION_KEYS": "128"},
                   "ours rows=128 separate": {"NFD_RT_ATTENTION_ROWS": "128", "NFD_RT_ATTENTION_SOFTMAX": "separate"},
                   "ours rows=64 separate": {"NFD_RT_ATTENTION_ROWS": "64", "NFD_RT_ATTENTION_SOFTMAX": "separate"},
                   "flashinfer": {"NFD_RT_ATTENTION": "flashinfer"},
                   **{f"flashinfer-sm90 splits={n}": {"NFD_RT_ATTENTION": "flashinfer-sm90",
                                                      "NFD_RT_ATTENTION_SPLITS": str(n)} for n in (1, 4, 5, 8)},
                   "cudnn": {"NFD_RT_ATTENTION": "cudnn"},
                   **{f"cudnn splits={n}": {"NFD_RT_ATTENTION": "cudnn", "NFD_RT_ATTENTION_SPLITS": str(n)}
                      for n in (1, 4, 8, 16)}}
# Convolution: auto (what a session runs: the fastest of CUTLASS and cuDNN, timed at the shape's first call), each
# engine by name, and the former im2col path.
CONV_ENGINES = {"auto": {}, "cutlass": {"NFD_RT_CONV": "implicit"}, "cudnn": {"NFD_RT_CONV": "cudnn"},
                "im2col": {"NFD_RT_CONV": "im2col"}}


def time_variants(core, ops, case: OpCase, kw: dict, target_s: float, samples: int,
                  variants: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Times the op under each variant's environment; records its median and every kernel that really ran
    (kernels_used: a variant that does not take the problem falls back, and says so there). A switch already set
    in the environment (a GPU run's working switches, tools/gpu/new_paths.py) holds: the default variant runs
    with it, and a variant that would set it otherwise is not run (a path found broken is not timed)."""
    out, saved = {}, {k: os.environ.get(k) for env in variants.values() for k in env}
    try:
        for name, env in variants.items():
            clash = [f"{k}={saved[k]}" for k, v in env.items() if saved.get(k) is not None and saved[k] != v]
            if clash:
                out[name] = {"error": f"not run: the environment sets {', '.join(clash)}"}
                continue
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.environ.update(env)
            core.clear_kernels_used()
            try:
                ts = time_op(ops, case, kw, target_s, samples)
            except Exception as e:  # noqa: BLE001 - e.g. FlashInfer not built: the others still run
                out[name] = {"error": f"{type(e).__name__}: {e}"}
                continue
            out[name] = {"ms": float(np.median(ts)) * 1e3, "samples": ts, "kernels": dict(core.kernels_used())}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def pick_variant(variants: dict[str, dict], row: dict, key: str, choose_fastest: bool, default: str) -> list[float]:
    """Records every variant's time under row[key] and returns the samples the row reports: the fastest
    (what a session picks) or the default (what a session runs)."""
    timed = {k: v for k, v in variants.items() if "ms" in v}
    if not timed:
        raise RuntimeError("; ".join(f"{k}: {v.get('error')}" for k, v in variants.items()))
    fastest = min(timed, key=lambda k: timed[k]["ms"])
    chosen = fastest if choose_fastest or default not in timed else default
    row[key] = {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in variants.items()}
    row[key + "_reported"], row[key + "_fastest"] = chosen, fastest
    return timed[chosen]["samples"]


def time_torch(fn: Callable[[], Any], torch, cuda: bool, target_s: float, samples: int) -> list[float]:
    """Seconds per call of fn: on CUDA a captured graph of back-to-back calls timed with events (plain loop if the
    capture fails), on the CPU a host clock around a loop."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    repeat = int(min(200, max(1, target_s / max(time.perf_counter() - t0, 1e-7))))
    if not cuda:
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            out.append((time.perf_counter() - t0) / repeat)
        return out
    graph = None
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                fn()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - not capturable: time the plain loop
        graph = None
    out = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if graph is not None:
            graph.replay()
        else:
            for _ in range(repeat):
                fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3 / repeat)
    return out


def ceilings(device: str, dtype: str, threads: int) -> dict:
    """Measured compute and bandwidth ceilings (METHOD: datasheet rates are leads)."""
    out: dict = {}
    if device == "cuda":
        import torch

        dt = getattr(torch, dtype)
        n = 8192
        a, bm = torch.randn(n, n, device="cuda", dtype=dt), torch.randn(n, n, device="cuda", dtype=dt)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here, as the runtime's fp32 path
        t = float(np.median(time_torch(lambda: a @ bm, torch, True, 0.05, 5)))
        torch.backends.cuda.matmul.allow_tf32 = prev
        out["peak_tflops"] = 2 * n**3 / t / 1e12
        out["peak_tflops_how"] = f"torch {n}x{n}x{n} {dtype} matmul on random data"
        src = torch.randn(512 * 2**20 // 4, device="cuda")  # 512 MiB
        dst = torch.empty_like(src)
        t = float(np.median(time_torch(lambda: dst.copy_(src), torch, True, 0.02, 5)))
        out["peak_gbs"] = 2 * src.numel() * 4 / t / 1e9
        out["peak_gbs_how"] = "torch device-to-device copy of 512 MiB (bytes read + written)"
        del a, bm, src, dst
        torch.cuda.empty_cache()
    else:
        peak = fps.measure_cpu_gemm_peak(threads)
        if peak:
            out["peak_tflops"] = peak
            out["peak_tflops_how"] = f"512x1024x1024 fp32 GEMM through nfd_rt's OpenBLAS, {threads} thread(s)"
        src = np.random.default_rng(0).standard_normal(64 * 2**20 // 4).astype(np.float32)  # 64 MiB
        dst = np.empty_like(src)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t0)
        out["peak_gbs"] = 2 * src.nbytes / best / 1e9
        out["peak_gbs_how"] = "numpy copy of 64 MiB, one thread (bytes read + written)"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="model config (default tiny)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per frame (sets calls per frame; default 4)")
    p.add_argument("--threads", type=int, default=fps.default_threads(), help="CPU threads (default: physical cores)")
    p.add_argument("--only", help="comma-separated op names to run (e.g. linear,attention)")
    p.add_argument("--samples", type=int, default=5, help="timed batches per op, median reported (default 5)")
    p.add_argument("--target-ms", type=float, default=None,
                   help="time per timed batch (default 2 ms on CUDA, 20 ms on the CPU)")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip the PyTorch peer of each op")
    p.add_argument("--out", help="JSON output (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)

    import nfd_rt
    from nfd_rt._native import core

    ops = core().ops
    if not hasattr(ops, "set_timing"):
        raise SystemExit("this nfd_rt build has no ops.set_timing: rebuild the extension")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    sched = {1: (1.0,), 2: (1.0, 0.5), 4: (1.0, 0.75, 0.5, 0.25)}
    cfg = nfd_rt.configs.get(args.config).replace(schedule=sched[args.steps])
    b = 4 if dtype == "float32" else 2
    target = (args.target_ms or (2.0 if args.device == "cuda" else 20.0)) / 1e3
    result: dict = {**fps.result_header("ops", args.device), "config": args.config, "device": args.device,
                    "dtype": dtype, "threads": args.threads, "steps": args.steps,
                    "full_cache_visible_frames": cfg.cache_frames + 1}
    torch = None
    if args.peers or args.device == "cuda":
        try:
            import torch  # noqa: F811

            torch.set_num_threads(args.threads)
        except ImportError:
            log("torch not installed: no PyTorch peers" + (" and no measured GPU ceilings" if args.device == "cuda"
                                                             else ""))
    if args.device == "cuda" and torch is None:
        result["ceilings"] = {}
    else:
        result["ceilings"] = ceilings(args.device, dtype, args.threads)
    peak_f = result["ceilings"].get("peak_tflops")
    peak_b = result["ceilings"].get("peak_gbs")
    kw = {"device": args.device, "dtype": dtype, "threads": args.threads}
    only = set(args.only.split(",")) if args.only else None
    rows = []
    cases = frame_cases(cfg, b)
    out_shapes: dict[str, tuple] = {}
    for case in cases:
        if only and case.op not in only:
            continue
        row: dict = {"name": case.name, "op": case.op, "calls_per_frame": case.calls_per_frame,
                     "flops": case.flops, "bytes": case.bytes_moved}
        try:
            if case.op == "linear" and args.device == "cuda" and dtype != "float32":
                v = time_variants(core(), ops, case, kw, target, args.samples, LINEAR_ENGINES)
                ts = pick_variant(v, row, "engines", True, "cutlass")
            elif case.op == "attention" and args.device == "cuda" and dtype != "float32":
                v = time_variants(core(), ops, case, kw, target, args.samples, ATTENTION_IMPLS)
                ts = pick_variant(v, row, "impls", False, "ours")
            elif case.op in ("conv2d", "upsample2x_conv2d") and args.device == "cuda" and dtype != "float32":
                v = time_variants(core(), ops, case, kw, target, args.samples, CONV_ENGINES)
                ts = pick_variant(v, row, "engines", False, "auto")
            else:
                ts = time_op(ops, case, kw, target, args.samples)
            out = case.run(ops, kw)
            out_shapes[case.name] = tuple((out[0] if isinstance(out, tuple) else out).shape)
            t = float(np.median(ts))
            row.update(ms=t * 1e3, ms_samples=[x * 1e3 for x in ts], ms_per_frame=t * 1e3 * case.calls_per_frame,
                       tflops=case.flops / t / 1e12, gbs=case.bytes_moved / t / 1e9)
            if peak_f and peak_b:
                bound = max(case.flops / (peak_f * 1e12), case.bytes_moved / (peak_b * 1e9))
                row["roofline_ms"] = bound * 1e3
                row["of_roofline"] = bound / t
                row["bound_by"] = "compute" if case.flops / (peak_f * 1e12) > case.bytes_moved / (peak_b * 1e9) \
                    else "memory"
        except Exception as e:  # noqa: BLE001 - a changed op signature must not stop the others
            row["error"] = f"{type(e).__name__}: {e}"
        if torch is not None and args.peers and case.peer is not None:
            try:
                fn = case.peer(torch, torch.device(args.device), getattr(torch, dtype))
                with torch.no_grad():
                    tp = float(np.median(time_torch(fn, torch, args.device == "cuda", target, args.samples)))
                row["torch_ms"] = tp * 1e3
                row["torch_tflops"] = case.flops / tp / 1e12
            except Exception as e:  # noqa: BLE001
                row["torch_error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
        log(f"  {case.name}: " + (f"{row['ms']:.4f} ms" if "ms" in row else row.get("error", "?"))
            + (f" (torch {row['torch_ms']:.4f} ms)" if "torch_ms" in row else ""))
    result["ops"] = rows
    if not only:  # the table against the runtime's own count of a frame's op calls
        try:  # a session that fails to open here (a CUDA context a variant broke) must not lose the rows above
            reported = runtime_frame_calls(cfg, args.device, dtype, args.threads)
        except Exception as e:  # noqa: BLE001
            result["frame_calls"] = {"error": f"{type(e).__name__}: {e}"}
            log(f"frame calls not counted: {type(e).__name__}: {e}")
        else:
            diffs = check_frame_calls(cases, out_shapes, reported)
            result["frame_calls"] = {"runtime": [[op, list(shape), n] for (op, shape), n in sorted(reported.items())],
                                     "matches_this_table": not diffs, "differences": diffs}
            for d in diffs:
                log(f"frame calls differ: {d}")
    total = sum(r.get("ms_per_frame", 0.0) for r in rows)
    result["sum_ms_per_frame"] = total
    by_op: dict[str, float] = {}
    for r in rows:
        by_op[r["op"]] = by_op.get(r["op"], 0.0) + r.get("ms_per_frame", 0.0)
    result["ms_per_frame_by_op"] = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))

    if args.out:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise SystemExit(f"{out} exists: pass --overwrite or another --out")
    else:
        stem = f"ops_{args.config}_{args.device}_{dtype}_t{args.threads}_{result['environment']['date'][:10]}"
        out = Path(args.out_dir) / f"{stem}.json"
        n = 2
        while out.exists():
            out, n = Path(args.out_dir) / f"{stem}_{n}.json", n + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log(f"wrote {out}")
    print(table(result))
    return 0


def table(result: dict) -> str:
    c = result["ceilings"]
    env = result["environment"]
    lines = [f"{result['config']} {result['device']} {result['dtype']} ({env.get('gpu') or env.get('cpu')}), "
             f"full cache ({result['full_cache_visible_frames']} visible frames); ceilings: "
             f"{c.get('peak_tflops', float('nan')):.3f} TFLOP/s, {c.get('peak_gbs', float('nan')):.0f} GB/s",
             "| op | calls/frame | ms/call | ms/frame | TFLOP/s | GB/s | of roofline | torch ms/call |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(result["ops"], key=lambda r: -r.get("ms_per_frame", 0.0)):
        if "ms" not in r:
            lines.append(f"| {r['name']} | {r['calls_per_frame']} | failed: {r.get('error', '?')[:50]} | | | | | |")
            continue
        roof = f"{100 * r['of_roofline']:.0f}% ({r['bound_by'][:3]})" if "of_roofline" in r else "-"
        peer = f"{r['torch_ms']:.4f}" if "torch_ms" in r else "-"
        lines.append(f"| {r['name']} | {r['calls_per_frame']} | {r['ms']:.4f} | {r['ms_per_frame']:.3f} | "
                     f"{r['tflops']:.3f} | {r['gbs']:.1f} | {roof} | {peer} |")
    lines.append(f"\nSum of op times per frame: {result['sum_ms_per_frame']:.2f} ms; by op: " +
                 ", ".join(f"{k} {v:.2f}" for k, v in result["ms_per_frame_by_op"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
