"""The kernels written since the last GPU run, once each at a real model's shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck python tools/gpu/memcheck_shapes.py [--config nfd-310m] [--dtype bfloat16]
    python tools/gpu/memcheck_shapes.py --device cpu          # the same calls on the CPU (a smoke test)

A short tiny session (tools/gpu/session_smoke.py) runs every kernel, but at tiny's shapes: head_dim 32, D = 128,
no partial tiles of the real sizes. These are the shapes where an index bug would show on nfd-310m: attention at
head_dim 64 over a full cache with both query tiles (64 and 128 rows per CTA) and both softmax forms (folded and
separate), the fused gated-add + layernorm at D = 1024, the RoPE split with grouped and single heads, the VAE's
last convolution (64 -> 3, Cout padded to 8) and a 3x3 convolution of the first level, on both engines; linear
on both GEMM engines. Each call's result is
checked against a float32 CPU run of the same op (relative L2 error), so a kernel that runs clean under the
sanitizer but writes garbage still fails. Exit status 1 when any call fails or differs.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import nfd_rt
from nfd_rt import _core

ops = _core.ops
TOL = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}
# The value of each switch that selects the default (new) path; on the CPU only calls with these run.
DEFAULTS = {"NFD_RT_ATTENTION_ROWS": "128", "NFD_RT_ATTENTION_SOFTMAX": "folded", "NFD_RT_FUSED_NORM": "on", "NFD_RT_ROPE_GROUP": "4", "NFD_RT_GEMM": "cutlass",
            "NFD_RT_CONV": "implicit"}


def built(part: str) -> bool:
    """Whether the CUDA build has `part` compiled in ("cublaslt", "flashinfer_sm90", ... of cuda_build_info)."""
    try:
        return bool(_core.cuda_build_info().get(part))
    except Exception:  # noqa: BLE001 - a build without CUDA
        return False


def randn(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def calls(cfg):
    """(name, switches, function(device, dtype) -> array or tuple)."""
    H, hd, D = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    N = cfg.tokens_per_frame
    S = cfg.cache_frames + 1
    q, kc, vc = randn(H, N, hd, seed=1), randn(S, N, H, hd, seed=2), randn(S, N, H, hd, seed=3)
    visible = list(range(S))
    visible = visible[:cfg.sink_frames] + visible[cfg.sink_frames + 5:] + visible[cfg.sink_frames:cfg.sink_frames + 5]
    x, gate, y = randn(N, D, seed=4), randn(D, seed=5), randn(N, D, seed=6, scale=2.0)
    sh, sc = randn(D, seed=7, scale=0.5), randn(D, seed=8, scale=0.5)
    qkv = randn(N, 3 * D, seed=9)
    rows, cols = cfg.grid
    w1, b1 = randn(4 * D, D, seed=10, scale=D ** -0.5), randn(4 * D, seed=11)
    c0 = cfg.vae.channels[0]
    img = randn(c0, cfg.frame_height, cfg.frame_width, seed=12)
    w_out, b_out = randn(3, c0, 3, 3, seed=13, scale=(9 * c0) ** -0.5), randn(3, seed=14)
    w33, b33 = randn(c0, c0, 3, 3, seed=15, scale=(9 * c0) ** -0.5), randn(c0, seed=16)

    def dev(device, dtype):
        return {"device": device, "dtype": dtype}

    out = []
    for rows_per_cta in ("128", "64"):
        for form in ("folded", "separate"):
            out.append((f"attention H={H} N={N} hd={hd} over {S} slots",
                        {"NFD_RT_ATTENTION_ROWS": rows_per_cta, "NFD_RT_ATTENTION_SOFTMAX": form},
                        lambda d, t: ops.attention(q, kc, vc, visible, **dev(d, t))))
    out.append((f"attention H={H} N={N} hd={hd} over {S} slots, 64x128 tiles", {"NFD_RT_ATTENTION_KEYS": "128"},
                lambda d, t: ops.attention(q, kc, vc, visible, **dev(d, t))))
    out.append((f"attention H={H} N={N} hd={hd} over {S} slots, FlashInfer sm90 in 5 ranges",
                {"NFD_RT_ATTENTION": "flashinfer-sm90", "NFD_RT_ATTENTION_SPLITS": "5"},
                lambda d, t: ops.attention(q, kc, vc, visible, **dev(d, t))))
    out.append(("attention after attention_prepare", {},
                lambda d, t: ops.attention(q, kc, vc, visible, prepare=True, **dev(d, t))))
    for fused in ("on", "off"):
        out.append((f"gated_add_layernorm_modulate {N}x{D}", {"NFD_RT_FUSED_NORM": fused},
                    lambda d, t: ops.gated_add_layernorm_modulate(x, gate, y, sh, sc, 1e-6, **dev(d, t))))
    for group in ("4", "1"):
        out.append((f"rope_qkv_split {rows}x{cols} H={H} hd={hd} slot 7 of {S}", {"NFD_RT_ROPE_GROUP": group},
                    lambda d, t: ops.rope_qkv_split(qkv, 40, list(cfg.rope_dims), cfg.rope_theta, cols, H, slots=S,
                                                    write_slot=7, **dev(d, t))))
    for engine in ("cutlass", "cublaslt"):
        out.append((f"linear {N}x{D} -> {4 * D} +bias gelu_tanh", {"NFD_RT_GEMM": engine},
                    lambda d, t: ops.linear(x, w1, b1, "gelu_tanh", **dev(d, t))))
    for engine in ("implicit", "cudnn", "im2col"):
        out.append((f"conv2d conv_out {c0}->3 {cfg.frame_height}x{cfg.frame_width}", {"NFD_RT_CONV": engine},
                    lambda d, t: ops.conv2d(img, w_out, b_out, 1, 1, **dev(d, t))))
        out.append((f"conv2d {c0}->{c0} 3x3 +residual", {"NFD_RT_CONV": engine},
                    lambda d, t: ops.conv2d(img, w33, b33, 1, 1, img, **dev(d, t))))
    return out


def rel_l2(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="nfd-310m", help="model config whose shapes to use (default nfd-310m)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 on CUDA (default), float32 on the CPU")
    args = p.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    cfg = nfd_rt.configs.get(args.config)
    bad = 0
    for name, env, fn in calls(cfg):
        label = name + "".join(f" {k}={v}" for k, v in env.items())
        if args.device == "cpu" and any(DEFAULTS.get(k) != v for k, v in env.items()):
            continue  # the switches choose CUDA kernels: on the CPU one run of each call is enough
        if env.get("NFD_RT_GEMM") == "cublaslt" and not built("cublaslt"):
            print(f"memcheck_shapes: {label}: skipped (cuBLASLt not compiled in)", flush=True)
            continue
        if env.get("NFD_RT_ATTENTION") == "flashinfer-sm90" and not built("flashinfer_sm90"):
            print(f"memcheck_shapes: {label}: skipped (FlashInfer's Hopper attention not compiled in)", flush=True)
            continue
        saved = {k: os.environ.get(k) for k in env}
        try:
            os.environ.update(env)
            got = fn(args.device, dtype)
            ref = fn("cpu", "float32") if args.device != "cpu" else got
        except Exception as e:  # noqa: BLE001 - report every call, then fail
            print(f"memcheck_shapes: {label}: FAILED: {type(e).__name__}: {e}", flush=True)
            bad += 1
            continue
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        got_t, ref_t = (got, ref) if isinstance(got, tuple) else ((got,), (ref,))
        errs = [rel_l2(g, r) for g, r in zip(got_t, ref_t)]
        ok = all(np.isfinite(e) and e <= TOL[dtype] for e in errs) and all(np.all(np.isfinite(g)) for g in got_t)
        bad += not ok
        print(f"memcheck_shapes: {label}: {'ok' if ok else 'DIFFERS'} (rel. L2 vs CPU fp32 "
              f"{', '.join(f'{e:.1e}' for e in errs)}; limit {TOL[dtype]:.0e})", flush=True)
    print(f"memcheck_shapes: {'all calls ok' if not bad else f'{bad} call(s) failed or differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
