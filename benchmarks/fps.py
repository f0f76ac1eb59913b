#!/usr/bin/env python3
"""Frames per second of nfd_rt against PyTorch baselines, all in one run on the same random weights.

    python benchmarks/fps.py --config tiny --device cpu --frames 300
    python benchmarks/fps.py --config nfd-310m --device cuda --steps 4 --frames 100 --curve
    python benchmarks/fps.py --config oasis-500m --frames 2      (Oasis: every timed frame at a full 32-frame window)
    python benchmarks/fps.py --config waypoint-1.5-1b-360p --frames 3   (Waypoint: its own runners and injected full
                                 cache, latent and RGB frames/s: benchmarks/fps_waypoint.py)

Steady state by default: each runner steps `sink_frames + window + 1` untimed frames first, so every timed frame
sees a full KV cache (sinks + window + itself); the JSON records each timed frame's visible-frame count.
`--curve` adds one rollout from reset per runner: time against visible frames, 1 .. full.

Runners (`--runners`, default all; each steps the same actions with the same seed):
  nfd_rt[<device>,<dtype>]  the C++ runtime (nfd_rt.Session), every dtype the device supports (or --dtype): on
                            the CPU float32, and bfloat16 where the CPU has AVX512-BF16 or AMX
  eager                     ReferenceSession: the readable oracle (3-D SDPA, torch.cat of the cache, host RoPE)
  torch-static              nfd_rt.baselines.static.StaticSession: static 4-D KV cache, fused SDPA, all on device
  no-cache                  recomputes the whole visible context every pass (how Oasis-style runtimes work)
  onnxruntime[<device>]     the ONNX export run by ONNX Runtime (nfd_rt.onnx_runtime.OnnxSession; where installed)
  compile-static            torch-static with the whole frame under torch.compile(mode=--compile-mode, default
                            max-autotune: autotuned kernels + CUDA graphs); compiled last (minutes)
Oasis configs (oasis-500m, oasis-tiny) have their own baselines, the reference's samplers (docs/oasis.md):
  oasis-recompute           upstream's loop (OasisReferenceSession sampler "recompute"): every DDIM step re-runs
                            the DiT over the last max_frames frames
  oasis-cached              the reference's "cached" sampler in eager PyTorch: the same algorithm as nfd_rt
                            (steps passes over the new frame + a cache-write pass), gathering the cache per pass
  oasis-static              nfd_rt.baselines.oasis_static.OasisStaticSession: that sampler written for speed (a
                            preallocated K/V ring per layer written in place, SDPA, adaLN of all passes in one GEMM)
  oasis-compile-static      oasis-static with the whole frame under one torch.compile(mode=--compile-mode; default
                            max-autotune on CUDA, default on the CPU); compiled last, with compile-static
Their context is pre-filled with max_frames - 1 random latents (reset(latents=...)), so every timed frame sees a
full window of max_frames frames; --steps n runs upstream's n-step DDIM levels (default: the config's).
torch-static, compile-static, oasis-static and oasis-compile-static run once per --torch-dtypes entry (CPU default: float32, and bfloat16 where the CPU
has AVX512-BF16 or AMX, i.e. oneDNN's bf16 kernels; CUDA: bfloat16); a dtype other than the first is named in the
runner, e.g. torch-static[bfloat16]. On the CPU the profiled frames of a PyTorch runner also record which oneDNN
kernels ran (ONEDNN_VERBOSE), so a bf16 baseline is shown to run on AMX or AVX512-BF16.
--interleave (the default on the CPU, where machines are shared) sets every runner up and warms it first, then
times the frames round-robin, one frame of each runner in turn: a change of load falls on all runners alike. The
JSON records the load average around the timed frames.
Reports frames/s, p50/p99/max ms, memory, FLOPs per frame (docs/performance.md), achieved TFLOP/s, which
attention kernels ran (torch.profiler), compile and recompile counts, and the ratio of the best nfd_rt runner to
each baseline and to the strongest one. Writes JSON under benchmarks/results/ (a new file, never over an
existing one) after every runner, so a killed run keeps what finished; --markdown prints a table.

Adding a runner: write `def make(bench) -> Runner` (or a list of them) and decorate it with
`@register("name", devices=(...))`; `Runner` says what the benchmark needs from it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import result_header  # noqa: E402  (benchmarks/common.py)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name, for the roofline fraction.
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                        "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
GPU_BANDWIDTH_TBS = {"H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "H100": 3.35, "H200": 4.8, "A100": 2.0}
# Substrings of profiler event names that belong to attention (aten ops and CUDA kernels).
ATTENTION_EVENTS = ("attention", "flash", "fmha", "sdpa", "cudnn_generated_fort_native_sdpa", "softmax",
                    "prefillwithkvcache")  # FlashInfer's kernels: PrefillWithKVCacheKernel (sm90), ...


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Work per frame (docs/performance.md)


def oasis_frame_cost(cfg, bytes_per_value: int = 2, visible_frames: int | None = None) -> dict:
    """An Oasis frame, cached: steps + 1 single-frame DiT passes (spatial + temporal sub-blocks; the temporal
    attention of each token over `visible_frames` keys) and one ViT decode. `recompute_flops_per_frame`: upstream's
    loop, steps passes over all visible frames and no cache-write pass."""
    D, N, L, F = cfg.hidden_size, cfg.tokens_per_frame, cfg.depth, visible_frames or cfg.cache_frames + 1
    sub_gemm = 2 * N * D * (3 * D + D + 2 * cfg.mlp_ratio * D) + 2 * D * 6 * D
    spatial = sub_gemm + 4 * N * N * D
    temporal = sub_gemm + 4 * N * F * D
    dit_pass = L * (spatial + temporal) + 2 * N * cfg.patch_dim * D * 2 + 2 * D * 2 * D
    v, Nv = cfg.vae, cfg.latent_height * cfg.latent_width
    E = v.decoder_dim
    vae = v.decoder_depth * (2 * Nv * E * (3 * E + E + 2 * v.mlp_ratio * E) + 4 * Nv * Nv * E)
    vae += 2 * Nv * E * (cfg.latent_channels + cfg.vae_patch_dim)
    passes = cfg.num_steps + 1
    dit_params = L * 2 * (12 * D * D + 6 * D * D) + 2 * cfg.patch_dim * D
    kv_bytes = 2 * L * F * N * D * bytes_per_value
    # upstream's pass: both sub-blocks over all F frames (spatial attention per frame, temporal over F frames)
    recompute_pass = L * F * (2 * sub_gemm + 4 * N * N * D + 4 * N * F * D) + 2 * F * N * cfg.patch_dim * D * 2
    return {
        "flops_per_frame": passes * dit_pass + vae,
        "dit_flops_per_pass": dit_pass,
        "vae_flops": vae,
        "recompute_flops_per_frame": cfg.num_steps * recompute_pass + vae,
        "bytes_per_frame": passes * (dit_params * bytes_per_value + kv_bytes),
        "passes_per_frame": passes,
        "visible_frames": F,
    }


def frame_cost(cfg, bytes_per_value: int = 2, visible_frames: int | None = None) -> dict:
    """FLOPs and bytes of one frame: (steps) denoising passes + 1 cache-write pass + one VAE decode, for a frame
    that attends to `visible_frames` frames (default: a full cache, sinks + window + itself)."""
    if getattr(cfg, "architecture", "nfd") == "oasis":
        return oasis_frame_cost(cfg, bytes_per_value, visible_frames)
    D, N, L = cfg.hidden_size, cfg.tokens_per_frame, cfg.depth
    keys = (visible_frames or cfg.cache_frames + 1) * N
    per_layer = 2 * N * D * (3 * D + D + 2 * cfg.mlp_ratio * D) + 4 * N * keys * D + 2 * D * 6 * D
    dit_pass = L * per_layer + 2 * N * cfg.patch_dim * D * 2 + 2 * D * 2 * D
    passes = cfg.num_steps + 1
    # VAE decoder convolutions.
    v, h, w = cfg.vae, cfg.latent_height, cfg.latent_width
    ch = v.channels
    vae = 2 * cfg.latent_channels * ch[-1] * 9 * h * w
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for _ in range(v.num_res_blocks):
            vae += 2 * 9 * h * w * (cin * ch[i] + ch[i] * ch[i]) + (2 * h * w * cin * ch[i] if cin != ch[i] else 0)
            cin = ch[i]
        if i > 0:
            h, w = 2 * h, 2 * w
            vae += 2 * 9 * h * w * cin * cin
    vae += 2 * 9 * h * w * ch[0] * 3
    dit_params = L * (12 * D * D + 6 * D * D) + 2 * cfg.patch_dim * D
    kv_bytes = 2 * L * keys * D * bytes_per_value
    return {
        "flops_per_frame": passes * dit_pass + vae,
        "dit_flops_per_pass": dit_pass,
        "vae_flops": vae,
        "bytes_per_frame": passes * (dit_params * bytes_per_value + kv_bytes),
        "passes_per_frame": passes,
        "visible_frames": visible_frames or cfg.cache_frames + 1,
    }


def visible_frames(cfg, frame_index: int) -> int:
    """Frames a frame attends to (itself included): all earlier ones until the cache is full, then
    sinks + window + itself."""
    return min(frame_index, cfg.cache_frames) + 1


# ---------------------------------------------------------------------------------------------------------------
# Runners


@dataclass
class Runner:
    """One way of producing frames. `step(action)` returns the uint8 frame on the host (so device work has
    finished when it returns); `reset()` forgets every frame. `info` goes into the JSON as is."""

    name: str
    step: Callable[[np.ndarray], np.ndarray]
    reset: Callable[[], None]
    close: Callable[[], None] = lambda: None
    info: dict = field(default_factory=dict)
    torch_runner: bool = False  # profile its attention ops/kernels with torch.profiler
    frames: int | None = None  # timed frames, if fewer than --frames (slow runners)
    # Fills the context to a full cache without stepping (cheaper warm-up for runners without a cache).
    prefill: Callable[[], None] | None = None
    prefill_warmup: int = 2  # untimed frames after a prefill
    extra_warmup: int = 0  # untimed frames more (CUDA_GRAPH_WARMUP for a runner whose compiled calls record graphs)
    mark_warmup: Callable[[], None] | None = None  # called just before the first warm-up frame
    end_warmup: Callable[[], None] | None = None  # called after the last warm-up frame (before other runners warm)
    mark_timing: Callable[[], None] | None = None  # called just before the first timed frame
    after_timing: Callable[[], dict] | None = None  # extra JSON after the timed frames (e.g. recompiles)
    memory_bytes: Callable[[], int] | None = None


# Under torch.compile with CUDA graphs the first two compiled calls warm up and record the graph: a runner's
# untimed frames more, so the recording does not land on the first timed frame (and flatter nfd_rt's ratio).
CUDA_GRAPH_WARMUP = 2


def dtype_list(text: str) -> list[str]:
    """A comma-separated dtype option (--torch-dtypes, --compile-dtypes) as a list."""
    return [d.strip() for d in text.split(",") if d.strip()]


@dataclass
class Bench:
    """What a runner factory gets: the config, the arguments, the weights (torch model and .nfd file)."""

    cfg: Any
    args: argparse.Namespace
    path: str  # the .nfd file of the weights
    model: Any = None  # nfd_rt.reference.NFDModel or OasisModel (None without torch)

    @property
    def cuda(self) -> bool:
        return self.args.device == "cuda"

    @property
    def oasis(self) -> bool:
        return getattr(self.cfg, "architecture", "nfd") == "oasis"

    @property
    def torch_dtype_name(self) -> str:
        """The first of --torch-dtypes: eager and no-cache run in it, the other runners' names omit it."""
        return self.args.torch_dtypes.split(",")[0]

    @property
    def torch_dtypes(self) -> list[str]:
        return dtype_list(self.args.torch_dtypes)

    @property
    def compile_dtypes(self) -> list[str]:
        """--compile-dtypes, else --torch-dtypes: the dtypes of the compiled runners."""
        return dtype_list(self.args.compile_dtypes or self.args.torch_dtypes)

    def torch_name(self, runner: str, dtype: str) -> str:
        return runner if dtype == self.torch_dtype_name else f"{runner}[{dtype}]"

    def sync(self) -> None:
        if self.cuda and self.model is not None:
            import torch

            torch.cuda.synchronize()


@dataclass
class Registration:
    factory: Callable[[Bench], Runner | list[Runner]]
    devices: tuple[str, ...]
    needs_torch: bool
    unavailable: Callable[[], str | None] = lambda: None  # a reason to skip it here (a missing package), or None
    archs: tuple[str, ...] = ("nfd",)  # the model architectures it runs


RUNNERS: dict[str, Registration] = {}


def register(name: str, devices: tuple[str, ...] = ("cpu", "cuda"), needs_torch: bool = True,
             unavailable: Callable[[], str | None] = lambda: None, archs: tuple[str, ...] = ("nfd",)):
    """Registers a runner factory under `name` (the order of registration is the order of the run, except that
    compile-static runs last); `archs`: the architectures (config families) it runs."""

    def deco(fn):
        RUNNERS[name] = Registration(fn, devices, needs_torch, unavailable, archs)
        return fn

    return deco


def cpu_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX, as nfd_rt's oneDNN sees it)."""
    try:
        from nfd_rt._native import core

        return bool(core().cpu_bf16()["ok"])
    except (ImportError, AttributeError):
        return False


def missing(*modules: str) -> Callable[[], str | None]:
    """unavailable= for runners that need optional modules."""

    def check():
        import importlib.util

        for m in modules:
            try:
                found = importlib.util.find_spec(m) is not None
            except ModuleNotFoundError:  # a parent package is missing
                found = False
            if not found:
                return f"needs {m}"
        return None

    return check


def oasis_prefill(reset_latents: Callable[[np.ndarray], None], cfg) -> Callable[[], None]:
    """A full window of context: max_frames - 1 random latents (the same for every runner), so the next frame sees
    max_frames frames. The work of a frame depends on the count of context frames, not on their content."""

    def prefill():
        z = np.random.default_rng(1).standard_normal(
            (cfg.cache_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)).astype(np.float32)
        reset_latents(z)

    return prefill


def engines_used(dtype: str) -> dict:
    """What each op of a `dtype` session ran and why, from nfd_rt._core.kernels_used(): per op shape the kernel or
    engine, and for the choices made at session open ("... (choice)") both timings and the winner (timed), or the
    switch that forced it, or the fallback taken."""
    from nfd_rt import _core

    tag = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype]
    return {k: v for k, v in _core.kernels_used().items() if f" {tag} " in f" {k} "}


@register("nfd_rt", needs_torch=False, archs=("nfd", "oasis"))
def make_nfd_rt(bench: Bench) -> list[Runner]:
    import nfd_rt

    from nfd_rt import _core

    dtypes = [bench.args.dtype] if bench.args.dtype else (
        ["bfloat16", "float16", "float32"] if bench.cuda else ["bfloat16", "float32"] if cpu_bf16() else ["float32"])
    out = []
    _core.clear_kernels_used()
    for dtype in dtypes:
        s = nfd_rt.Session(bench.path, device=bench.args.device, dtype=dtype, seed=0, threads=bench.args.threads)
        r = Runner(f"nfd_rt[{bench.args.device},{dtype}]", s.step, s.reset, s.close, info={"cuda_graphs": bench.cuda},
                   memory_bytes=s.memory_bytes)
        r.after_timing = lambda dtype=dtype: {"engines": engines_used(dtype)}
        if bench.oasis:
            r.prefill = oasis_prefill(lambda z, s=s: s.reset(latents=z), bench.cfg)
            r.prefill_warmup = 1
            r.info["what"] = "the C++ runtime, the reference's cached sampler (steps + 1 single-frame passes)"
        out.append(r)
    return out


def make_oasis_reference(bench: Bench, sampler: str, what: str, warmup: int) -> Runner:
    from nfd_rt.reference import OasisReferenceSession

    ref = OasisReferenceSession(bench.model, device=bench.args.device, seed=0, dtype=bench.torch_dtype_name,
                                sampler=sampler)
    return Runner(f"oasis-{sampler}", ref.step, ref.reset, ref.close, torch_runner=True,
                  prefill=oasis_prefill(lambda z: ref.reset(latents=z), bench.cfg), prefill_warmup=warmup,
                  info={"what": what, "sampler": sampler})


@register("oasis-recompute", archs=("oasis",))
def make_oasis_recompute(bench: Bench) -> Runner:
    r = make_oasis_reference(bench, "recompute", "upstream's loop (OasisReferenceSession sampler 'recompute'): every "
                             "DDIM step re-runs the DiT over the last max_frames frames, eager PyTorch", warmup=0)
    r.frames = max(1, bench.args.frames // 2)  # minutes a frame at oasis-500m on a CPU
    return r


@register("oasis-cached", archs=("oasis",))
def make_oasis_cached(bench: Bench) -> Runner:
    return make_oasis_reference(bench, "cached", "the reference's cached sampler (OasisReferenceSession sampler "
                                "'cached'), eager PyTorch: nfd_rt's algorithm, the cached PyTorch baseline", warmup=1)


@register("oasis-static", archs=("oasis",))
def make_oasis_static(bench: Bench) -> list[Runner]:
    from nfd_rt.baselines.oasis_static import OasisStaticSession

    out = []
    for dtype in bench.torch_dtypes:  # one runner per --torch-dtypes entry, as torch-static
        s = OasisStaticSession(bench.model, device=bench.args.device, seed=0, dtype=dtype)
        out.append(Runner(bench.torch_name("oasis-static", dtype), s.step, s.reset, s.close, torch_runner=True,
                          prefill=oasis_prefill(lambda z, s=s: s.reset(latents=z), bench.cfg), prefill_warmup=1,
                          info={"what": "nfd_rt.baselines.oasis_static.OasisStaticSession, eager: the cached sampler "
                                        "with a preallocated K/V ring per layer written in place, SDPA on 4-D inputs, "
                                        "adaLN of all passes in one GEMM per sub-block, noise and RoPE on the device",
                                "torch_dtype": dtype}))
    return out


# Inductor's mode for oasis-compile-static on the CPU when --compile-mode is not given: "default" fuses the
# elementwise work (RoPE, adaLN modulation, gates, GELU, DDIM) around ATen's GEMMs and SDPA; "max-autotune" would
# also benchmark Inductor's C++ GEMM templates for every GEMM shape at compile time (a long compile on 2 cores).
OASIS_CPU_COMPILE_MODE = "default"


@register("oasis-compile-static", archs=("oasis",))
def make_oasis_compile_static(bench: Bench) -> list[Runner]:
    return [oasis_compile_static(bench, dtype) for dtype in bench.compile_dtypes]


def oasis_compile_static(bench: Bench, dtype: str) -> Runner:
    from nfd_rt.baselines.oasis_static import OasisStaticSession

    mode = bench.args.compile_mode or ("max-autotune" if bench.cuda else OASIS_CPU_COMPILE_MODE)
    # The pre-filled context's write passes run eagerly (reset); every frame stepped after it is at a full
    # window: one graph. --curve compiles the cache-filling frames too (a second graph).
    curve_names = bench.args.curve_runners.split(",") if bench.args.curve_runners else None
    compile_filling = bool(bench.args.curve) and (curve_names is None or "oasis-compile-static" in curve_names)
    s = OasisStaticSession(bench.model, device=bench.args.device, seed=0, dtype=dtype,
                           compile_mode=mode, compile_filling=compile_filling, backend=bench.args.compile_backend)
    warm, warmed, mark, after = compile_counters()
    info = {"compile_mode": mode, "compile_backend": bench.args.compile_backend, "fullgraph": True,
            "compile_filling_frames": compile_filling,
            "what": "oasis-static, the whole frame (DDIM passes, cache-write pass, decode) under one torch.compile",
            "torch_compile_cudagraphs": bench.cuda and bench.args.compile_backend == "inductor"
            and mode in ("reduce-overhead", "max-autotune"), "torch_dtype": dtype}
    return Runner(bench.torch_name("oasis-compile-static", dtype), s.step, s.reset, s.close, torch_runner=True,
                  info=info, prefill=oasis_prefill(lambda z: s.reset(latents=z), bench.cfg), prefill_warmup=1,
                  extra_warmup=CUDA_GRAPH_WARMUP if info["torch_compile_cudagraphs"] else 0,
                  mark_warmup=warm, end_warmup=warmed, mark_timing=mark, after_timing=after)


@register("eager")
def make_eager(bench: Bench) -> Runner:
    from nfd_rt.reference import ReferenceSession

    ref = ReferenceSession(bench.model, device=bench.args.device, seed=0, dtype=bench.torch_dtype_name)
    return Runner("eager", ref.step, ref.reset, ref.close, torch_runner=True,
                  info={"what": "ReferenceSession: 3-D SDPA inputs, torch.cat of the cache per layer and pass, "
                                "RoPE angles and noise on the host"})


@register("torch-static")
def make_torch_static(bench: Bench) -> list[Runner]:
    from nfd_rt.baselines.static import StaticSession

    out = []
    for dtype in bench.torch_dtypes:
        s = StaticSession(bench.model, device=bench.args.device, seed=0, dtype=dtype)
        out.append(Runner(bench.torch_name("torch-static", dtype), s.step, s.reset, torch_runner=True,
                          info={"what": "static 4-D KV cache, SDPA on 4-D inputs, RoPE/noise on device, eager",
                                "torch_dtype": dtype}))
    return out


@register("no-cache")
def make_no_cache(bench: Bench) -> Runner:
    """Recompute the whole visible context (sinks + window + current) for every pass of every frame."""
    import torch

    from nfd_rt import rng

    cfg, dev = bench.cfg, torch.device(bench.args.device)
    dtype = getattr(torch, bench.torch_dtype_name)
    model = bench.model.to(dev, dtype)
    latents: list = []
    offset = [0]  # frames dropped from the front of `latents` (only the last ctx_len are kept)
    ctx_len = cfg.window + cfg.sink_frames

    @torch.no_grad()
    def step(action):
        i = offset[0] + len(latents)
        ctx = latents[-ctx_len:] if ctx_len else []
        a = torch.as_tensor(action, device=dev, dtype=dtype)
        acts = a.expand(len(ctx) + 1, -1)[None]
        x = torch.from_numpy(rng.latent_noise(0, i, 0, (cfg.latent_channels, cfg.latent_height,
                                                         cfg.latent_width))).to(dev, dtype)
        sched = list(cfg.schedule) + [0.0]
        for k in range(cfg.num_steps):
            seq = torch.stack(ctx + [x])[None]
            t = torch.full((1, len(ctx) + 1), cfg.context_noise, device=dev, dtype=dtype)
            t[0, -1] = sched[k]
            v = model.velocity(seq, t, acts, frame_offset=max(0, i - len(ctx)))[0, -1]
            x = x + (sched[k + 1] - sched[k]) * v
        latents.append(x)
        if len(latents) > ctx_len:
            del latents[0]
            offset[0] += 1
        return model.decode(x[None])[0].cpu().numpy()

    def reset():
        latents.clear()
        offset[0] = 0

    def prefill():  # a full context of noise latents: the same work per frame as after cache_frames real frames
        reset()
        g = torch.Generator().manual_seed(1)
        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        latents.extend(torch.randn(shape, generator=g).to(dev, dtype) for _ in range(ctx_len))

    return Runner("no-cache", step, reset, torch_runner=True, prefill=prefill,
                  frames=max(5, bench.args.frames // 4),  # it is slow; fewer frames suffice
                  info={"what": "recomputes the visible context every pass; context pre-filled with noise latents"})


@register("onnxruntime", needs_torch=False, unavailable=missing("onnxruntime", "onnx", "nfd_rt.onnx_runtime"))
def make_onnxruntime(bench: Bench) -> Runner:
    """The ONNX export (nfd_rt.export.to_onnx: dit_pass + vae_decoder) stepped by nfd_rt.onnx_runtime.OnnxSession with ONNX
    Runtime: CPU execution provider (intra-op threads = --threads) or CUDA (onnxruntime-gpu). Export time apart."""

    import onnxruntime as ort

    import nfd_rt
    from nfd_rt.onnx_runtime import OnnxSession

    providers = ["CPUExecutionProvider"]
    if bench.cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime {ort.__version__} has no CUDA execution provider (onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    tmp = tempfile.mkdtemp(prefix="nfd_bench_onnx_")
    t0 = time.perf_counter()
    nfd_rt.export.to_onnx(bench.path, tmp, encoder=False)
    export_s = time.perf_counter() - t0
    s = OnnxSession(tmp, seed=0, providers=providers, threads=bench.args.threads)
    if s.providers[0] != providers[0]:
        s.close()
        raise RuntimeError(f"ONNX Runtime fell back to {s.providers}")

    def close():
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Runner(f"onnxruntime[{bench.args.device}]", s.step, s.reset, close,
                  info={"export_seconds": export_s, "onnxruntime": ort.__version__, "providers": s.providers,
                        "kv_cache_on": getattr(s, "cache_device", None)})


COMPILED_RUNNERS = ("compile-static", "oasis-compile-static")  # run last; skipped by --compile-mode none


def compile_counters() -> tuple[Callable[[], None], Callable[[], None], Callable[[], None], Callable[[], dict]]:
    """(mark_warmup, end_warmup, mark_timing, after_timing) of a torch.compile runner: the graphs compiled in its
    own warm-up, recompiles during the timed frames, graph breaks, Inductor's CUDA-graph counters."""
    import torch._dynamo.utils as dynamo_utils

    counters = dynamo_utils.counters  # process-wide: each runner counts the graphs compiled in its own warm-up
    state: dict = {}

    def warm():
        state["start"] = counters["stats"]["unique_graphs"]

    def warmed():  # graphs compiled in this runner's own warm-up (with --interleave other runners warm up later)
        state["warmed"] = counters["stats"]["unique_graphs"]

    def mark():
        state["before_timing"] = counters["stats"]["unique_graphs"]

    def after() -> dict:
        now = counters["stats"]["unique_graphs"]
        return {"graphs_compiled": state.get("warmed", now) - state.get("start", now),
                "recompiles_during_timed_frames": now - state.get("before_timing", now),
                "graph_breaks": sum(counters["graph_break"].values()),
                "inductor_counters": {k: v for k, v in counters["inductor"].items()
                                      if "cudagraph" in k or k in ("extern_calls",)}}

    return warm, warmed, mark, after


@register("compile-static")
def make_compile_static(bench: Bench) -> list[Runner]:
    return [compile_static(bench, dtype) for dtype in bench.compile_dtypes]


def compile_static(bench: Bench, dtype: str) -> Runner:
    from nfd_rt.baselines.static import StaticSession

    mode = bench.args.compile_mode or "max-autotune"
    conv_backends = None
    if mode == "max-autotune" and not bench.args.compile_autotune_convs:
        # Inductor's Triton convolution templates took over 4 minutes of autotuning on an H200 (the VAE's many
        # conv shapes) and lost to cuDNN: leave convolutions to ATen (cuDNN), autotune the GEMMs.
        import torch._inductor.config as inductor_config

        conv_backends = inductor_config.max_autotune_conv_backends = "ATEN"
    # Compile the cache-filling frames too only when they are timed (the curve); else they run the same module
    # eagerly and one graph is compiled.
    curve_names = bench.args.curve_runners.split(",") if bench.args.curve_runners else None
    compile_filling = bool(bench.args.curve) and (curve_names is None or "compile-static" in curve_names)
    s = StaticSession(bench.model, device=bench.args.device, seed=0, dtype=dtype,
                      compile_mode=mode, compile_filling=compile_filling, backend=bench.args.compile_backend)
    warm, warmed, mark, after = compile_counters()
    info = {"compile_mode": mode, "compile_backend": bench.args.compile_backend, "fullgraph": True, "torch_dtype": dtype,
            "max_autotune_conv_backends": conv_backends or "inductor default",
            "compile_filling_frames": compile_filling,
            "what": "torch-static, the whole frame under one torch.compile"
                    + ("" if compile_filling else " (frames that fill the cache run eagerly: one graph)"),
            "torch_compile_cudagraphs": bench.cuda and bench.args.compile_backend == "inductor"
            and mode in ("reduce-overhead", "max-autotune")}
    return Runner(bench.torch_name("compile-static", dtype), s.step, s.reset, torch_runner=True, info=info,
                  extra_warmup=CUDA_GRAPH_WARMUP if info["torch_compile_cudagraphs"] else 0,
                  mark_warmup=warm, end_warmup=warmed, mark_timing=mark,
                  after_timing=after)


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def summarize(times: list[float], visible: list[int], cfg) -> dict:
    """Timing statistics; TFLOP/s = the timed frames' FLOPs (each at its own visible-frame count) / their time."""
    t = np.asarray(times) * 1e3
    flops = sum(frame_cost(cfg, 4, v)["flops_per_frame"] for v in visible)
    return {
        "frames": len(times),
        "fps": 1e3 / t.mean(),
        "ms_mean": float(t.mean()),
        "ms_p50": float(np.percentile(t, 50)),
        "ms_p99": float(np.percentile(t, 99)),
        "ms_max": float(t.max()),
        "tflops": float(flops) / (t.sum() / 1e3) / 1e12,
        "visible_frames": visible,
        "full_cache": all(v == cfg.cache_frames + 1 for v in visible),
        "ms": [round(float(x), 4) for x in t],
    }


def timed_frames(r: Runner, bench: Bench, actions: np.ndarray):
    """Warm-up, then the timed frames, one per iteration (so runners can take turns: --interleave). Returns (as
    StopIteration.value) the runner's JSON entry and the first frame it made."""
    cfg, args = bench.cfg, bench.args
    warmup = args.warmup if args.warmup is not None else cfg.cache_frames + 1
    frames = min(args.frames, r.frames or args.frames)
    r.reset()
    frame_index = 0
    if r.prefill is not None and args.warmup is None:
        r.prefill()
        frame_index, warmup = cfg.cache_frames, r.prefill_warmup
    if args.warmup is None:
        warmup += r.extra_warmup
    first = None
    warm_ms, times, visible = [], [], []
    if r.mark_warmup:
        r.mark_warmup()
    for n in range(warmup + frames):
        if n == warmup and r.end_warmup:
            r.end_warmup()
        if n >= warmup:
            yield
        if n == warmup and r.mark_timing:  # after the yield: with --interleave, once every runner is warm
            r.mark_timing()
        t0 = time.perf_counter()
        out = r.step(actions[n])
        bench.sync()
        dt = time.perf_counter() - t0
        if n == 0 and frame_index == 0:  # a pre-filled context makes another video: nothing to compare
            first = out
        if n < warmup:
            warm_ms.append(round(dt * 1e3, 3))
        else:
            times.append(dt)
            visible.append(visible_frames(cfg, frame_index))
            if args.progress and (n - warmup + 1) % max(1, frames // 5) == 0:
                log(f"  {r.name}: {n - warmup + 1}/{frames} frames, {len(times) / sum(times):.1f} FPS so far")
        frame_index += 1
    res = summarize(times, visible, cfg)
    res["warmup_frames"] = warmup
    res["warmup_ms"] = warm_ms  # the first frames carry one-time costs (compilation, graph capture)
    res["prefilled_context"] = r.prefill is not None and args.warmup is None
    res["_first_frame"] = first
    return res


def time_runner(r: Runner, bench: Bench, actions: np.ndarray) -> dict:
    """Warm-up, then the timed frames. Returns the runner's JSON entry (and the first frame it made)."""
    gen = timed_frames(r, bench, actions)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def curve(r: Runner, bench: Bench, actions: np.ndarray) -> dict:
    """One rollout from reset (per --curve-repeats, median of each frame): ms against visible frames."""
    cfg = bench.cfg
    n = cfg.cache_frames + 1 + bench.args.curve_extra
    runs = []
    for _ in range(bench.args.curve_repeats):
        r.reset()
        ms = []
        for i in range(n):
            t0 = time.perf_counter()
            r.step(actions[i % len(actions)])
            bench.sync()
            ms.append((time.perf_counter() - t0) * 1e3)
        runs.append(ms)
    ms = np.median(np.asarray(runs), axis=0)
    vis = [visible_frames(cfg, i) for i in range(n)]
    # Least-squares line over the frames after the first (which may carry one-time costs).
    slope, intercept = np.polyfit(np.asarray(vis[1:], float), ms[1:], 1) if n > 2 else (float("nan"),) * 2
    return {"visible_frames": vis, "ms": [round(float(x), 4) for x in ms], "repeats": bench.args.curve_repeats,
            "fit_ms_intercept": float(intercept), "fit_ms_per_visible_frame": float(slope),
            "fit_ms_at_full_cache": float(intercept + slope * (cfg.cache_frames + 1))}


def profile_frames(r: Runner, bench: Bench, actions: np.ndarray, frames: int = 2) -> dict:
    """Steps `frames` frames under torch.profiler: the attention ops and kernels that ran, and (CUDA) the
    kernels that took the most device time, any library's (CUPTI sees nfd_rt's kernels too)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    with profile(activities=acts) as prof:
        for i in range(frames):
            r.step(actions[i])
            bench.sync()
    onednn = None if bench.cuda or not r.torch_runner else onednn_kernels(lambda: r.step(actions[0]))
    attention: dict[str, int] = {}
    for e in prof.events():  # aten ops on the host (device kernels below)
        if e.device_type == DeviceType.CPU and any(s in e.name.lower() for s in ATTENTION_EVENTS):
            attention[e.name] = attention.get(e.name, 0) + 1
    kernels: dict[str, list] = {}  # device activity (kernels, copies) by name: [count, total us]
    if bench.cuda:
        for ev in prof.profiler.kineto_results.events():
            if ev.device_type() != DeviceType.CUDA:
                continue
            k = kernels.setdefault(ev.name(), [0, 0.0])
            k[0] += 1
            k[1] += ev.duration_ns() / 1e3
            if any(s in ev.name().lower() for s in ATTENTION_EVENTS):
                attention[ev.name()] = attention.get(ev.name(), 0) + 1
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[: bench.args.top_kernels]
    out: dict = {"frames": frames, "attention_events": dict(sorted(attention.items(), key=lambda kv: -kv[1]))}
    if onednn is not None:
        out["onednn_kernels_per_frame"] = onednn
    if bench.cuda:
        total = sum(v[1] for v in kernels.values())
        out["kernel_ms_per_frame"] = total / 1e3 / frames
        out["top_kernels"] = [{"name": k[:200], "calls_per_frame": v[0] / frames, "ms_per_frame": v[1] / 1e3 / frames}
                              for k, v in top]
    return out


def onednn_kernels(step: Callable[[], Any]) -> dict:
    """{"<primitive> <implementation>": calls} of the oneDNN primitives PyTorch ran during step() on the CPU (its
    ONEDNN_VERBOSE lines, which oneDNN writes to file descriptor 1): shows whether a bf16 baseline's matrix products
    ran on AMX (brg:avx512_core_amx...) or AVX512-BF16 (brg:avx512_core_bf16), or on no oneDNN kernel at all."""
    import torch

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        lines = f.read().splitlines()
    calls: dict[str, int] = {}
    for line in lines:  # onednn_verbose,[primitive,]exec,cpu,<kind>,<implementation>,...
        parts = line.split(",")
        if not parts[0].startswith("onednn_verbose") or "exec" not in parts:
            continue
        i = parts.index("exec")
        if len(parts) > i + 3:
            key = f"{parts[i + 2]} {parts[i + 3]}"
            calls[key] = calls.get(key, 0) + 1
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


def first_frame_diff(a: np.ndarray | None, b: np.ndarray | None) -> dict | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean_abs": float(d.mean()), "max_abs": int(d.max())}


def selected_runners(args, arch: str = "nfd") -> list[str]:
    names = [n for n, reg in RUNNERS.items() if args.device in reg.devices and arch in reg.archs]
    if args.runners:
        want = [w.strip() for w in args.runners.split(",") if w.strip()]
        unknown = [w for w in want if w not in RUNNERS]
        if unknown:
            raise SystemExit(f"unknown runner(s) {unknown}; known: {', '.join(RUNNERS)}")
        names = [n for n in names if n in want]
    if args.skip_baselines:
        names = [n for n in names if n == "nfd_rt"]
    if args.compile_mode == "none":
        names = [n for n in names if n not in COMPILED_RUNNERS]
    return sorted(names, key=lambda n: n in COMPILED_RUNNERS)  # compile last: minutes, and may not finish


def run_one(r: Runner, setup: float, timed: dict | None, bench: Bench, actions: np.ndarray, result: dict,
            first_frames: dict, save: Callable[[], None]) -> None:
    """Times runner r (unless `timed` holds its interleaved timing), profiles it and draws its curve (as asked),
    closes it and records its entry."""
    args = bench.args
    log(f"running {r.name} ..." if timed is None else f"finishing {r.name} ...")
    entry: dict = {"setup_seconds": setup, **r.info}
    try:
        if timed is None:
            before = load_average()
            timed = time_runner(r, bench, actions)
            timed["load_average"] = [before, load_average()]
        if "error" in timed:
            raise RuntimeError(timed["error"])
        entry.update(timed)
        first_frames[r.name] = entry.pop("_first_frame")
        if r.after_timing:
            entry.update(r.after_timing())
        if r.memory_bytes:
            entry["memory_bytes"] = r.memory_bytes()
        if args.profile and (r.torch_runner or bench.cuda) and bench.model is not None:
            try:
                entry["profile"] = profile_frames(r, bench, actions)
            except Exception as e:  # noqa: BLE001
                entry["profile"] = {"error": f"{type(e).__name__}: {e}"}
        curve_names = set(args.curve_runners.split(",")) if args.curve_runners else None
        if args.curve and (curve_names is None and r.name != "no-cache" or
                           curve_names is not None and (r.name in curve_names or r.name.split("[")[0] in curve_names)):
            log(f"  {r.name}: curve over visible frames ...")
            entry["curve"] = curve(r, bench, actions)
    except Exception as e:  # noqa: BLE001
        log(f"  {r.name} failed: {type(e).__name__}: {e}")
        entry["error"] = f"{type(e).__name__}: {e}"
        entry.pop("_first_frame", None)
    finally:
        r.close()
    result["runners"][r.name] = entry
    finish(result, first_frames)
    save()


def run_benchmark(args, result: dict, save: Callable[[], None]) -> dict:
    import nfd_rt

    cfg = nfd_rt.configs.get(args.config)
    arch = getattr(cfg, "architecture", "nfd")
    if arch == "waypoint":  # its own runners and its injected full cache: benchmarks/fps_waypoint.py
        import fps_waypoint

        return fps_waypoint.run(args, result, save)
    if arch == "oasis":
        cfg = cfg.replace(timesteps=nfd_rt.configs.ddim_timesteps(args.steps, cfg.noise_levels))  # upstream's levels
    else:
        sched = {1: (1.0,), 2: (1.0, 0.5), 4: (1.0, 0.75, 0.5, 0.25)}
        if args.steps not in sched:
            raise SystemExit(f"--steps must be one of {sorted(sched)}")
        cfg = cfg.replace(schedule=sched[args.steps])
    result["steps"] = cfg.num_steps
    warmup = args.warmup if args.warmup is not None else cfg.cache_frames + 1
    if warmup < cfg.cache_frames:
        log(f"warning: --warmup {warmup} < {cfg.cache_frames} cached frames: timed frames see a partly filled "
            "cache (not steady state; each frame's visible count is recorded)")
    n_actions = max(warmup, cfg.cache_frames + 1) + CUDA_GRAPH_WARMUP + args.frames + 2
    actions = np.random.default_rng(0).standard_normal((n_actions, cfg.action_dim)).astype(np.float32)
    result.update({"runners": {}, "config": cfg.to_dict(), "cost": frame_cost(cfg, 2),
                   "cache_frames": cfg.cache_frames, "warmup": warmup})

    model = None
    names = selected_runners(args, arch)
    try:
        if any(RUNNERS[n].needs_torch for n in names):
            import torch

            from nfd_rt.reference import NFDModel, OasisModel

            torch.set_num_threads(args.threads)
            log(f"building random {cfg.name} weights ...")
            model = (OasisModel if arch == "oasis" else NFDModel)(cfg, init_seed=0).eval()
    except ImportError:
        log("torch not installed: PyTorch baselines skipped (pip install 'nfd_rt[torch]')")
    path = os.path.join(args.work_dir, f"{cfg.name}.nfd")
    if model is not None:
        nfd_rt.export.save(model, path)
    else:
        nfd_rt.export.save_random(cfg, path)
    bench = Bench(cfg, args, path, model)

    first_frames: dict[str, np.ndarray] = {}
    made_runners: list[tuple[Runner, float]] = []  # (runner, setup seconds), in order
    for name in names:
        reg = RUNNERS[name]
        if reg.needs_torch and model is None:
            continue
        why = reg.unavailable()
        if why:
            log(f"{name} skipped: {why}")
            result.setdefault("skipped_runners", {})[name] = why
            continue
        log(f"setting up {name} ...")
        t0 = time.perf_counter()
        try:
            made = reg.factory(bench)
        except Exception as e:  # noqa: BLE001 - report and go on with the other runners
            log(f"  {name} failed to start: {e}")
            result["runners"][name] = {"error": f"{type(e).__name__}: {e}"}
            save()
            continue
        made = made if isinstance(made, list) else [made]
        setup = (time.perf_counter() - t0) / len(made)
        if not args.interleave:
            for r in made:
                run_one(r, setup, None, bench, actions, result, first_frames, save)
            del made
            gc.collect()
            if bench.cuda and model is not None:
                import torch

                torch.cuda.empty_cache()
        else:
            made_runners.extend((r, setup) for r in made)
    if made_runners:  # --interleave: every runner warmed up, then the timed frames round-robin
        gens: dict[str, Any] = {}
        entries: dict[str, dict] = {}
        for r, _ in made_runners:
            log(f"warming up {r.name} ...")
            gens[r.name] = timed_frames(r, bench, actions)
            try:
                next(gens[r.name])  # runs the warm-up; stops before the first timed frame
            except Exception as e:  # noqa: BLE001
                log(f"  {r.name} failed: {type(e).__name__}: {e}")
                entries[r.name] = {"error": f"{type(e).__name__}: {e}"}
                del gens[r.name]
        result["interleaved"] = True
        result["load_average_before_timing"] = load_average()
        log(f"timing {len(gens)} runners, one frame each in turn ...")
        while gens:
            for name in list(gens):
                try:
                    next(gens[name])
                except StopIteration as done:
                    entries[name] = done.value
                    del gens[name]
                except Exception as e:  # noqa: BLE001
                    log(f"  {name} failed: {type(e).__name__}: {e}")
                    entries[name] = {"error": f"{type(e).__name__}: {e}"}
                    del gens[name]
        result["load_average_after_timing"] = load_average()
        for r, setup in made_runners:
            run_one(r, setup, entries.get(r.name), bench, actions, result, first_frames, save)
    if args.scaling:
        result["scaling"] = scaling_run(bench)
    args.model_file = path  # the many-worlds benchmarks (--batch-sizes, --repeat) run on the same weights
    result["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if bench.cuda and model is not None:
        import torch

        result["peak_torch_device_bytes"] = torch.cuda.max_memory_allocated()
    return result


def best_and_strongest(runners: dict) -> tuple[str | None, str | None]:
    """The fastest nfd_rt runner and the fastest baseline of a run (None where the run has none), by frames/s."""
    timed = {k: v["fps"] for k, v in runners.items() if "fps" in v}
    ours = [k for k in timed if k.startswith("nfd_rt")]
    base = [k for k in timed if not k.startswith("nfd_rt")]
    return (max(ours, key=timed.get) if ours else None), (max(base, key=timed.get) if base else None)


def finish(result: dict, first_frames: dict) -> None:
    """Ratios of the best nfd_rt runner to each baseline and to the strongest; first frames against eager's."""
    runners = result["runners"]
    ref = first_frames.get("eager")
    for name, frame in first_frames.items():
        if name != "eager" and ref is not None:
            runners[name]["first_frame_vs_eager"] = first_frame_diff(frame, ref)
    best, strongest = best_and_strongest(runners)
    if strongest:
        result["strongest_baseline"] = strongest
    if best:
        result["best"] = best
        result["ratios"] = {f"{best} / {k}": runners[best]["fps"] / v["fps"] for k, v in runners.items()
                            if not k.startswith("nfd_rt") and "fps" in v}
        if strongest:
            result["ratio_vs_strongest_baseline"] = runners[best]["fps"] / runners[strongest]["fps"]


def merge_results(results: list[dict], sources: list[str]) -> dict:
    """One result from several fps.py runs of one machine and config (runners of later runs added; a name that is
    already there gets its compile mode appended); ratios against the strongest baseline recomputed."""
    if not results:
        raise SystemExit("nothing to merge")
    merged = json.loads(json.dumps(results[0]))
    merged["merged_from"] = sources
    for other, source in zip(results[1:], sources[1:]):
        for key in ("config", "steps", "device"):
            if other.get(key) != merged.get(key):
                raise SystemExit(f"cannot merge {source}: its {key} differs ({other.get(key)!r} vs {merged.get(key)!r})")
        for name, r in other.get("runners", {}).items():
            key = name if name not in merged["runners"] else f"{name} [{r.get('compile_mode', source)}]"
            merged["runners"][key] = {**r, "from": source}
        merged["complete"] = merged.get("complete", False) and other.get("complete", False)
    finish(merged, {})
    return merged


def scaling_run(bench: Bench) -> dict:
    """nfd_rt: per-frame time against frame index over a long rollout (the rolling cache keeps it flat)."""
    import nfd_rt

    args, cfg = bench.args, bench.cfg
    n = args.scaling_frames
    a = np.zeros(cfg.action_dim, np.float32)
    dtype = args.dtype or ("bfloat16" if bench.cuda else "float32")
    times = []
    with nfd_rt.Session(bench.path, device=args.device, dtype=dtype, seed=0, threads=args.threads) as session:
        for i in range(n):
            t0 = time.perf_counter()
            session.step(a)
            times.append(time.perf_counter() - t0)
            if args.progress and (i + 1) % max(1, n // 20) == 0:
                log(f"  scaling: {i + 1}/{n} frames")
    t = np.asarray(times) * 1e3

    def window_ms(center):
        lo, hi = max(0, center - 50), min(n, center + 50)
        return float(np.median(t[lo:hi]))

    out = {"frames": n, "dtype": dtype, "ms_at_100": window_ms(100), f"ms_at_{n}": window_ms(n - 50)}
    out["ratio_last_vs_100"] = out[f"ms_at_{n}"] / out["ms_at_100"]
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(t, lw=0.5)
            ax.set_xlabel("frame index")
            ax.set_ylabel("ms per frame")
            ax.set_title(f"{cfg.name} long rollout")
            png = Path(args.out_path).parent / f"scaling_{cfg.name}_{args.device}.png"
            fig.savefig(png, dpi=120, bbox_inches="tight")
            out["plot"] = png.name  # beside the JSON
        except ImportError:
            log("matplotlib not installed: no scaling plot")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Environment and output


def peak_tflops(env: dict) -> float | None:
    gpu = env.get("gpu", "")
    for name, peak in GPU_BF16_PEAK_TFLOPS.items():
        if name in gpu:
            return peak
    return None


def default_threads() -> int:
    """What nfd_rt.Session(threads=0) uses: the physical cores."""
    try:
        from nfd_rt._native import core

        return core().default_threads()
    except ImportError:
        return max(1, (os.cpu_count() or 2) // 2)


def measure_cpu_gemm_peak(threads: int) -> float | None:
    """The CPU's roofline peak: TFLOP/s of a large fp32 GEMM (512x1024 @ 1024x1024) through nfd_rt's own linear
    op, i.e. OpenBLAS as nfd_rt calls it, at `threads` threads; best of 5."""
    try:
        from nfd_rt._native import core

        ops = core().ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 1024), dtype=np.float32)
    w = rng.standard_normal((1024, 1024), dtype=np.float32)
    ops.linear(x, w, threads=threads)  # warm-up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        ops.linear(x, w, threads=threads)
        best = min(best, time.perf_counter() - t0)
    return 2 * 512 * 1024 * 1024 / best / 1e12


def cache_line(result: dict) -> str:
    """What cache the timed frames saw, from the per-frame visible counts (or the stored annotation)."""
    cfg = result.get("config", {})
    full = result.get("cache_frames", cfg.get("sink_frames", 0) + cfg.get("window", 0)) + 1
    vis = [v for r in result["runners"].values() for v in r.get("visible_frames", [])]
    vis = vis or result.get("timed_visible_frames", [])
    if not vis:
        return "Cache fill of the timed frames: not recorded.\n"
    lo, hi = min(vis), max(vis)
    if lo == hi == full:
        return f"Steady state: every timed frame saw a full cache ({full} visible frames).\n"
    n_full = sum(v == full for v in vis)
    note = f"; {result['visible_frames_note']}" if result.get("visible_frames_note") else ""
    return (f"**Partial cache, not steady state**: the timed frames saw {lo} to {hi} of {full} visible frames "
            f"({n_full} of {len(vis)} at a full cache{note}).\n")


def fps_text(fps: float) -> str:
    """One decimal, or three significant digits below 1 FPS (oasis-500m on a CPU: seconds a frame)."""
    return f"{fps:.1f}" if fps >= 1 else f"{fps:.3g}"


def markdown(result: dict) -> str:
    env, rows = result["environment"], []
    rows.append(f"**{result['config']['name']}**, {result['steps']} steps, "
                f"{env.get('gpu') or env.get('cpu')} ({result['device']}, {result['threads']} "
                f"thread{'s' if result['threads'] != 1 else ''}), "
                f"commit `{env['commit'][:10]}`, {env['date'][:10]}\n")
    rows.append(cache_line(result))
    peak = result.get("peak_bf16_tflops") or result.get("peak_fp32_gemm_tflops_measured")
    if result.get("peak_bf16_tflops"):
        rows.append(f"Roofline peak: {peak:.0f} TFLOP/s (dense bf16 tensor cores of this GPU).\n")
    elif peak:
        rows.append(f"Roofline peak: {peak * 1e3:.0f} GFLOP/s (measured: a 512x1024x1024 fp32 GEMM through "
                    f"nfd_rt's OpenBLAS{', ' + blas_kernels(env) if blas_kernels(env) else ''}).\n")
    rows.append("| runner | FPS | p50 ms | p99 ms | max ms | TFLOP/s | of peak | speed-up of nfd_rt best |")
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    best = result.get("best")
    for name, r in result["runners"].items():
        if "fps" not in r:
            rows.append(f"| {name} | failed: {r.get('error', '?')[:60]} | | | | | | |")
            continue
        ratio = result["runners"][best]["fps"] / r["fps"] if best else float("nan")
        frac = f"{100 * r['fraction_of_peak']:.1f}%" if "fraction_of_peak" in r else "-"
        rows.append(f"| {name} | {fps_text(r['fps'])} | {r['ms_p50']:.2f} | {r['ms_p99']:.2f} | {r['ms_max']:.2f} | "
                    f"{r['tflops']:.3f} | {frac} | {ratio:.2f}x |")
    notes = []
    base = {k: v for k, v in result["runners"].items() if not k.startswith("nfd_rt") and "fps" in v}
    strongest = result.get("strongest_baseline") or (max(base, key=lambda k: base[k]["fps"]) if base else None)
    if best and strongest:
        notes.append(f"Strongest baseline: {strongest}; the best nfd_rt runner ({best}) is "
                     f"{result['runners'][best]['fps'] / result['runners'][strongest]['fps']:.2f}x it.")
    dev = result["device"]
    ours = {d: result["runners"].get(f"nfd_rt[{dev},{d}]", {}).get("fps") for d in ("bfloat16", "float32")}
    if dev == "cpu" and ours["bfloat16"] and ours["float32"]:
        notes.append(f"nfd_rt bf16 / fp32: {ours['bfloat16'] / ours['float32']:.2f}x; bf16 on this CPU: "
                     f"{env.get('cpu_bf16', '?')}.")
    if result.get("interleaved"):
        notes.append(f"Interleaved: every runner warmed up first, then one timed frame of each in turn; load "
                     f"average {result.get('load_average_before_timing')} before the timed frames, "
                     f"{result.get('load_average_after_timing')} after (this process adds about its threads).")
    for name, r in result["runners"].items():
        if "recompiles_during_timed_frames" in r:
            how = (f"mode={r.get('compile_mode')!r}" if r.get("compile_backend", "inductor") == "inductor"
                   else f"backend={r['compile_backend']!r}")
            notes.append(f"{name}: torch.compile({how}), {r['graphs_compiled']} graph(s) "
                         f"compiled, {r['recompiles_during_timed_frames']} recompiles during the timed frames, "
                         f"slowest warm-up frame {max(r['warmup_ms']) / 1e3:.0f} s (compilation)"
                         + (f"; CUDA graphs skipped {r['inductor_counters']['cudagraph_skips']} time(s)"
                            if result["device"] == "cuda" and r.get("inductor_counters", {}).get("cudagraph_skips")
                            else "") + ".")
        att = r.get("profile", {}).get("attention_events")
        if att and name != "nfd_rt" and not name.startswith("nfd_rt"):
            notes.append(f"{name} attention: " + ", ".join(f"`{k[:70]}`" for k in list(att)[:3]) + ".")
        dnnl = r.get("profile", {}).get("onednn_kernels_per_frame")
        if dnnl and "bfloat16" in name:  # where its bf16 products ran (AMX or AVX512-BF16)
            notes.append(f"{name} oneDNN kernels per frame: " + ", ".join(f"`{k}` x{v}" for k, v in list(dnnl.items())[:3])
                         + ".")
        if "curve" in r:
            c = r["curve"]
            notes.append(f"{name} curve: {c['fit_ms_intercept']:.2f} ms + {c['fit_ms_per_visible_frame']:.3f} ms x "
                         f"visible frames (fit over frames 2..{len(c['ms'])}).")
    if notes:
        rows.append("")
        rows.extend(f"- {n}" for n in notes)
    return "\n".join(rows) + "\n"


def blas_kernels(env: dict) -> str:
    """'Haswell kernels' from an OpenBLAS config string such as 'OpenBLAS 0.3.34 DYNAMIC_ARCH ... Haswell ...'."""
    words = env.get("blas", "").split()
    known = {"Haswell", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen", "Sandybridge", "Nehalem", "Prescott"}
    picked = [w for w in words if w in known]
    return f"{picked[0]} kernels" if picked else ""


def output_path(args, result: dict) -> Path:
    """--out (refused if it exists, unless --overwrite), or a new file under --out-dir: never a stored result."""
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise SystemExit(f"{out} exists: pass --overwrite to replace it, or another --out")
        return out
    stem = f"{args.config}_{args.device}_s{args.steps}_t{args.threads}_{result['environment']['date'][:10]}"
    out = Path(args.out_dir) / f"{stem}.json"
    n = 2
    while out.exists():
        out = Path(args.out_dir) / f"{stem}_{n}.json"
        n += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny",
                   help="model config: tiny, nfd-130m, nfd-310m, oasis-tiny, oasis-500m, waypoint-tiny, "
                   "waypoint-1.5-1b, waypoint-1.5-1b-360p (default tiny)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on (default cpu)")
    p.add_argument("--dtype", help="only this nfd_rt dtype (default: every dtype the device supports)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps per frame: 1, 2 or 4 (default 4); Oasis: upstream's n-step DDIM levels "
                        "(default: the config's, 10 for oasis-500m)")
    p.add_argument("--frames", type=int, default=50, help="timed frames per runner (default 50)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed frames before timing (default sink_frames + window + 1: a full cache)")
    p.add_argument("--history", type=int, default=None,
                   help="Waypoint: frame index of the first warm-up frame, its history injected (default the "
                   "config's global_window, 128: a full cache; benchmarks/fps_waypoint.py)")
    p.add_argument("--runners", help=f"comma-separated runners to run (default all: {', '.join(RUNNERS)})")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="CPU threads for nfd_rt and PyTorch alike (default: physical cores, as nfd_rt.Session)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of compile-static and oasis-compile-static (default max-autotune; "
                        f"oasis-compile-static on the CPU: {OASIS_CPU_COMPILE_MODE!r}); 'none' skips them")
    p.add_argument("--compile-autotune-convs", action="store_true",
                   help="with max-autotune, also autotune Triton convolutions (default: convolutions stay on cuDNN; "
                        "their autotuning takes minutes)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of compile-static (default inductor; aot_eager: tracing only, tests)")
    p.add_argument("--torch-dtypes", help="dtypes of the PyTorch runners, comma-separated; eager and no-cache take "
                   "the first (default: CUDA bfloat16; CPU float32, plus bfloat16 where the CPU has AVX512-BF16 or AMX)")
    p.add_argument("--compile-dtypes", help="dtypes of compile-static (default: --torch-dtypes)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="warm every runner up, then time one frame of each in turn (default: on the CPU)")
    p.add_argument("--skip-baselines", action="store_true", help="time nfd_rt only")
    p.add_argument("--curve", action="store_true",
                   help="also one rollout from reset per runner: ms per frame against visible frames (1 .. full)")
    p.add_argument("--curve-runners", help="runners of the curve (default all but no-cache)")
    p.add_argument("--curve-extra", type=int, default=3, help="full-cache frames at the end of the curve (default 3)")
    p.add_argument("--curve-repeats", type=int, default=1, help="rollouts per curve, median per frame (default 1)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the torch.profiler frames (attention kernels; top CUDA kernels)")
    p.add_argument("--top-kernels", type=int, default=15, help="CUDA kernels listed per runner (default 15)")
    p.add_argument("--scaling", action="store_true", help="also a long nfd_rt rollout: time per frame vs index")
    p.add_argument("--scaling-frames", type=int, default=10000, help="frames of the long rollout (default 10000)")
    p.add_argument("--plot", action="store_true", help="write a PNG of the long rollout (needs matplotlib)")
    p.add_argument("--out", help="JSON output path (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    p.add_argument("--out-dir", default=str(HERE / "results"),
                   help="folder of the default output <config>_<device>_s<steps>_t<threads>_<date>[_n].json")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table of the results")
    p.add_argument("--markdown-from", metavar="JSON",
                   help="print the Markdown table of a stored result and exit (how the README's tables are made)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    p.add_argument("--batch-sizes", help="also many worlds: nfd_rt.step_batch over these session counts, e.g. "
                   "1,2,4,8,16 (benchmarks/worlds.py, on the run's model file)")
    p.add_argument("--repeat", help="also speculative sampling at these action-repeat probabilities, e.g. "
                   "0.5,0.8,0.95 (benchmarks/worlds.py; exact and parallel modes against plain stepping)")
    p.add_argument("--speculate", type=int, default=4, help="frames ahead for --repeat (default 4)")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="merge results of one machine (e.g. nfd_rt first, baselines later) into --out; ratios are "
                        "recomputed over every runner")
    args = p.parse_args(argv)
    if args.steps is None:  # NFD: 4; Oasis: the config's DDIM step count
        import nfd_rt

        cfg = nfd_rt.configs.get(args.config) if args.config in nfd_rt.configs.names("all") else None
        args.steps = cfg.num_steps if getattr(cfg, "architecture", "nfd") == "oasis" else 4
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    if args.merge:
        if not args.out:
            raise SystemExit("--merge needs --out")
        merged = merge_results([json.loads(Path(f).read_text()) for f in args.merge], [Path(f).name for f in args.merge])
        Path(args.out).write_text(json.dumps(merged, indent=2, sort_keys=True, default=float) + "\n")
        print(markdown(merged) if args.markdown else f"wrote {args.out}")
        return 0
    if args.torch_dtypes is None:
        args.torch_dtypes = "bfloat16" if args.device == "cuda" else "float32,bfloat16" if cpu_bf16() else "float32"
    if args.interleave is None:
        args.interleave = args.device == "cpu"
    if args.frames < 1 or (args.warmup is not None and args.warmup < 0) or args.curve_repeats < 1:
        raise SystemExit("--frames and --curve-repeats must be >= 1, --warmup >= 0")

    result = {**result_header("fps", args.device), "device": args.device, "steps": args.steps,
              "threads": args.threads, "complete": False}
    out = output_path(args, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    args.out_path = str(out)
    peak = None
    if args.device == "cuda":
        peak = peak_tflops(result["environment"])
        if peak:
            result["peak_bf16_tflops"] = peak
    else:
        peak = measure_cpu_gemm_peak(args.threads)
        if peak:
            result["peak_fp32_gemm_tflops_measured"] = peak

    def save():
        if peak:
            for r in result.get("runners", {}).values():
                if "tflops" in r:
                    r["fraction_of_peak"] = r["tflops"] / peak
        out.write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")

    # The run's model file (7 MiB for tiny, GiBs for the large configs) lives here until the end, whatever happens.
    args.work_dir = tempfile.mkdtemp(prefix="nfd_bench_")
    try:
        run_benchmark(args, result, save)
        if args.batch_sizes or args.repeat:
            import worlds  # benchmarks/worlds.py, beside this file

            dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
            if args.batch_sizes:
                log("many worlds: batched steps ...")
                result["batch"] = worlds.batch_benchmark(args.model_file, [int(x) for x in args.batch_sizes.split(",")],
                                                         args.frames, args.threads, args.device, dtype)
                save()
            if args.repeat:
                log("many worlds: speculative sampling ...")
                result["speculation"] = worlds.speculation_benchmark(
                    args.model_file, [float(x) for x in args.repeat.split(",")], args.speculate,
                    max(4 * args.frames, 100), args.threads, args.device, dtype, scripted=False)
                save()
        result["complete"] = True
        save()
    finally:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    log(f"wrote {out}")
    if args.markdown:
        print(markdown(result))
    else:
        for name, r in result["runners"].items():
            print(f"{name:28s} " + (f"{fps_text(r['fps']):>9s} FPS  p50 {r['ms_p50']:.2f} ms  p99 {r['ms_p99']:.2f} ms"
                                    if "fps" in r else f"failed: {r['error']}"))
        for k, v in result.get("ratios", {}).items():
            print(f"ratio {k}: {v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
