"""PyTorch's attention kernels at one full-cache frame's shape: the peers nfd_rt's attention is measured against.

    python tools/gpu/sdpa_bench.py [--config nfd-310m] [--splits 1,3,11,33] [--seconds 20] [--out sdpa.json]

One frame of nfd-310m at a full cache attends 336 queries per head over 33 x 336 = 11,088 keys. This times, in
bf16 (CUDA) with CUDA events, the median of many calls:
  - `F.scaled_dot_product_attention` under each backend PyTorch has (cuDNN, FLASH, EFFICIENT; MATH on the CPU);
  - the key range split into S chunks laid out as the batch dimension (so one frame's few queries fill the SMs,
    as nfd_rt's split-KV does), each chunk's output and log-sum-exp returned by the backend's own op
    (`_scaled_dot_product_cudnn_attention` / `_scaled_dot_product_flash_attention`; on the CPU a plain
    softmax), then merged: out = sum_s exp(lse_s - max lse) out_s / sum_s exp(lse_s - max lse).
Every variant is checked against a float32 reference (relative L2 error) before it is timed; a variant that
fails or is unavailable is recorded with its error, and the others go on. TFLOP/s counts 4 * Nq * Nk * d per
head (two matrix products).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def shape_of(config: str) -> dict:
    import nfd_rt

    cfg = nfd_rt.configs.get(config)
    visible = cfg.cache_frames + 1
    return {"config": config, "heads": cfg.num_heads, "queries": cfg.tokens_per_frame,
            "keys": visible * cfg.tokens_per_frame, "head_dim": cfg.head_dim, "visible_frames": visible}


def attention_with_lse(torch, q, k, v, backend: str):
    """(out [B, H, Nq, d], lse [B, H, Nq] float32) of one backend's op that returns the log-sum-exp."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "cudnn":
        r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
        return r[0], r[1].reshape(q.shape[:3]).float()
    if backend == "flash":
        r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
        return r[0], r[1].reshape(q.shape[:3]).float()
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # "math": the CPU's stand-in
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype), lse


def split_attention(torch, q, k, v, splits: int, backend: str):
    """The key range in `splits` chunks as the batch dimension, merged by log-sum-exp."""
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    chunk = Nk // splits
    kb = k.reshape(B, H, splits, chunk, d).transpose(1, 2).reshape(B * splits, H, chunk, d)
    vb = v.reshape(B, H, splits, chunk, d).transpose(1, 2).reshape(B * splits, H, chunk, d)
    qb = q.expand(splits, H, Nq, d) if B == 1 else q.repeat_interleave(splits, 0)
    out, lse = attention_with_lse(torch, qb.contiguous(), kb.contiguous(), vb.contiguous(), backend)
    return merge(torch, out.reshape(B, splits, H, Nq, d), lse.reshape(B, splits, H, Nq))


def merge(torch, out, lse):
    """out [B, S, H, Nq, d], lse [B, S, H, Nq] -> [B, H, Nq, d]."""
    w = torch.exp(lse - lse.amax(dim=1, keepdim=True))
    return ((out.float() * w[..., None]).sum(1) / w.sum(1)[..., None]).to(out.dtype)


def timed_ms(torch, fn, cuda: bool, seconds: float) -> tuple[float, int]:
    """Median milliseconds of `fn` over as many calls as fit in `seconds` (at least 5, at most 200)."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 200):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], len(times)


def run(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = args.device == "cuda"
    shape = shape_of(args.config) if not args.shape else dict(
        zip(("heads", "queries", "keys", "head_dim"), map(int, args.shape.split(","))), config="custom")
    H, Nq, Nk, d = shape["heads"], shape["queries"], shape["keys"], shape["head_dim"]
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, d, generator=g).to(args.device, dtype) for n in (Nq, Nk, Nk))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    flop = 4.0 * H * Nq * Nk * d
    result = {"shape": shape, "dtype": args.dtype, "device": args.device, "flop": flop, "variants": {},
              "torch": torch.__version__}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name()

    variants = {}
    backends = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"} if cuda \
        else {"math": "MATH"}
    for name, attr in backends.items():
        be = getattr(SDPBackend, attr, None)
        if be is None:
            result["variants"][f"sdpa {name}"] = {"error": f"this torch has no SDPBackend.{attr}"}
            continue
        def fn(be=be):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, k, v)
        variants[f"sdpa {name}"] = fn
    split_backends = ("cudnn", "flash") if cuda else ("math",)
    for splits in (int(s) for s in args.splits.split(",")):
        if Nk % splits:
            result["variants"][f"split {splits}"] = {"error": f"{Nk} keys do not split into {splits} equal chunks"}
            continue
        for be in split_backends:
            variants[f"{be} split {splits} + lse merge"] = (
                lambda splits=splits, be=be: split_attention(torch, q, k, v, splits, be))

    per_variant = max(0.5, args.seconds / max(1, len(variants)))
    for name, fn in variants.items():
        entry: dict = {}
        try:
            out = fn()
            err = float(torch.linalg.vector_norm((out.float() - ref).flatten()) / torch.linalg.vector_norm(ref.flatten()))
            entry["rel_l2_vs_fp32"] = err
            if not math.isfinite(err) or err > args.max_error:
                entry["error"] = f"relative L2 error {err:.3e} over {args.max_error}"
            else:
                ms, n = timed_ms(torch, fn, cuda, per_variant)
                entry.update(ms=ms, calls=n, tflops=flop / (ms * 1e-3) / 1e12)
        except Exception as e:  # noqa: BLE001 - record and go on with the other variants
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        result["variants"][name] = entry
        line = (f"{entry['ms']:.4f} ms  {entry['tflops']:.1f} TFLOP/s  err {entry['rel_l2_vs_fp32']:.1e}"
                if "ms" in entry else f"FAILED: {entry['error']}")
        print(f"sdpa_bench: {name:32s} {line}", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="nfd-310m", help="the frame shape of this config at a full cache (default "
                   "nfd-310m)")
    p.add_argument("--shape", help="heads,queries,keys,head_dim instead of --config")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on the CPU (default)")
    p.add_argument("--splits", default="1,3,11,33", help="key-range splits to try (default 1,3,11,33)")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget of the timings (default 20)")
    p.add_argument("--max-error", type=float, default=2e-2, help="largest relative L2 error accepted (default 2e-2)")
    p.add_argument("--out", help="JSON output path")
    args = p.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    ok = [v for v in result["variants"].values() if "ms" in v]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
