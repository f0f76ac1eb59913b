"""One op table, run on every backend.

Each row of CASES runs one op of the runtime (`nfd_rt._core.ops`, csrc/python/ops_bindings.cc) and compares it
with the PyTorch reference; every row runs on every (device, dtype) of BACKENDS. Each row of CONTRACTS hands an
op an argument its contract (csrc/ops/NAME.cc) must refuse and checks the error: the same exception, naming the
argument, with the same words on every backend.

Inputs are normals rounded to bfloat16 (and kept out of float16's subnormals), so they are exact in every dtype
and one float64 reference serves all. A row compares in one of three ways:
  close    rel. L2 error ||got - ref|| / ||ref|| within the dtype's tolerance (float32: 1e-5, or 5e-5 for sums
           of >= 1024 terms; float16: 2e-3; bfloat16: 1e-2), and on float32 max|got - ref| / max|ref| too;
  rounded  bit for bit the float32 reference rounded to the dtype (layout ops, conversions, noise);
  exact    bit for bit (uint8 results).
The CPU's bf16 rows run where the CPU has AVX512-BF16 or AMX (and are skipped, with the reason, elsewhere).
Rows that use a CUDA implementation switch (NFD_RT_GEMM, NFD_RT_ATTENTION, NFD_RT_ATTENTION_SPLITS) run on CUDA
only; a backend's documented limit (CUDA attention's head_dims) is a row that expects that backend's error.
CUDA rows are marked `cuda` and skipped with "no CUDA device" where none is present. What needs C++ (allocation
failures, graph capture and replay, the GEMM engine choice of linear_prepare) stays in tests/cuda/test_ops_cuda.cu.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from nfd_rt import configs, rng  # noqa: E402
from nfd_rt.reference.model import apply_rope, frames_to_images, images_to_frames, rope_angles  # noqa: E402
from nfd_rt.reference import oasis as oasis_ref  # noqa: E402
from nfd_rt.reference import waypoint as waypoint_ref  # noqa: E402

_core = pytest.importorskip("nfd_rt._core")
ops = _core.ops

BACKENDS = [("cpu", "float32"), ("cpu", "bfloat16"), ("cuda", "float32"), ("cuda", "float16"), ("cuda", "bfloat16")]
CPU_BF16 = _core.cpu_bf16()  # bf16 on the CPU: oneDNN on AMX or AVX512-BF16 (docs/cpu-backend.md)
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SWITCH_ENV = ("NFD_RT_ATTENTION", "NFD_RT_ATTENTION_SPLITS", "NFD_RT_ATTENTION_ROWS", "NFD_RT_ATTENTION_SOFTMAX",
              "NFD_RT_GEMM", "NFD_RT_CONV", "NFD_RT_FUSED_NORM", "NFD_RT_ROPE_GROUP", "NFD_RT_ATTENTION_KEYS")


def tol(dtype: str, long_sum: bool = False) -> float:
    return {"float32": 5e-5 if long_sum else 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]


def randn(*shape, seed=0, scale=1.0, offset=0.0) -> np.ndarray:
    """Normals rounded to bfloat16, none in float16's subnormal range: exact in all three dtypes."""
    v = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    v = np.where(np.abs(v) < 2.0**-14, np.copysign(2.0**-14, v), v)
    return torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16).float().numpy()


def T(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float64))


def rounded(a, dtype: str) -> np.ndarray:
    """float32 values as a tensor of `dtype` holds them."""
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(TORCH_DTYPE[dtype]).float().numpy()


def compare(got, ref, mode: str, dtype: str, long_sum: bool, what: str) -> None:
    got = np.asarray(got)
    ref = np.asarray(ref.numpy() if isinstance(ref, torch.Tensor) else ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, reference {ref.shape}"
    if mode == "exact":
        assert got.dtype == ref.dtype and np.array_equal(got, ref), f"{what}: differs from the reference"
        return
    if mode == "rounded":
        want = rounded(ref, dtype)
        bad = np.count_nonzero(got.view(np.uint32) != want.view(np.uint32))
        assert bad == 0, f"{what}: {bad} of {want.size} values differ from the reference rounded to {dtype}"
        return
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    g, r = got.astype(np.float64), ref.astype(np.float64)
    bound = tol(dtype, long_sum)
    rel_l2 = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)
    assert rel_l2 <= bound, f"{what}: rel. L2 error {rel_l2:.3e} > {bound:.0e}"
    if dtype == "float32":
        rel_max = np.abs(g - r).max(initial=0.0) / max(np.abs(r).max(initial=0.0), 1e-30)
        assert rel_max <= bound, f"{what}: max|got - ref| / max|ref| = {rel_max:.3e} > {bound:.0e}"


def cuda_16bit(device: str, dtype: str) -> bool:
    return device == "cuda" and dtype != "float32"


def only_cuda(device: str, dtype: str) -> bool:
    return device == "cuda"


def flashinfer_built(part: str = "flashinfer") -> bool:
    """Whether this build has FlashInfer's attention ("flashinfer") or its Hopper attention ("flashinfer_sm90")."""
    try:
        return bool(_core.cuda_build_info().get(part))
    except Exception:  # noqa: BLE001 - an older module without the report
        return False


def cudnn_built() -> bool:
    try:
        return bool(_core.cuda_build_info()["cudnn"])
    except Exception:  # noqa: BLE001 - an older module without the report
        return False


def cuda_16bit_cudnn(device: str, dtype: str) -> bool:
    """Rows of the cuDNN engines: CUDA 16-bit in a build with them (where the library does not load, the op falls
    back to ours and says so in kernels_used; the row still checks the result)."""
    return cuda_16bit(device, dtype) and cudnn_built()


@dataclass
class Case:
    """A row of the op table: `call(dev)` runs the op (dev: the binding's device/dtype keywords) and returns one
    array or a tuple; `ref()` returns the reference in the same form."""

    id: str
    call: Callable[[dict], Any]
    ref: Callable[[], Any]
    mode: Any = "close"  # one for every output, or a tuple of one per output
    long_sum: bool = False
    env: dict = field(default_factory=dict)
    where: Callable[[str, str], bool] = lambda device, dtype: True  # the backends the row runs on
    raises: dict = field(default_factory=dict)  # device -> (exception, regex): that backend's documented limit
    kernel: Callable[[str], tuple[str, str]] | None = None  # dtype -> (kernels_used key, what the value starts with)


CASES: list[Case] = []


def case(*args, **kwargs) -> None:
    CASES.append(Case(*args, **kwargs))


# ---- linear, gated_add ----------------------------------------------------------------------------------------
@functools.cache
def linear_inputs(M, K, N):
    return dict(x=randn(M, K, seed=1), w=randn(N, K, seed=2, scale=1 / math.sqrt(K)), b=randn(N, seed=3, scale=0.1),
                gate=randn(N, seed=4), y=randn(M, N, seed=5))


@functools.cache
def linear_product(M, K, N, bias):
    i = linear_inputs(M, K, N)
    p = T(i["x"]) @ T(i["w"]).T
    return p + T(i["b"]) if bias else p


@functools.cache
def linear_ref(M, K, N, epilogue, bias):
    i, p = linear_inputs(M, K, N), linear_product(M, K, N, bias)
    if epilogue == "gelu_tanh":
        return F.gelu(p, approximate="tanh")
    if epilogue == "gelu_erf":
        return F.gelu(p)
    if epilogue == "silu":
        return F.silu(p)
    if epilogue == "gated_residual":
        return T(i["y"]) + T(i["gate"]) * p
    return p


def linear_call(M, K, N, epilogue, bias, prepare=False):
    def call(dev):
        i = linear_inputs(M, K, N)
        gated = epilogue == "gated_residual"
        return ops.linear(i["x"], i["w"], i["b"] if bias else None, epilogue=epilogue,
                          gate=i["gate"] if gated else None, y=i["y"] if gated else None, prepare=prepare, **dev)
    return call


LINEAR_SHAPES = [
    (1, 8, 128), (16, 128, 384), (37, 64, 50),  # a matrix-vector product, aligned, unaligned
    (16, 128, 128), (77, 1024, 1024), (336, 4096, 1024), (336, 1024, 4096), (1, 1024, 6144), (200, 128, 4096),
    (33, 36, 20),  # unaligned: the SIMT GEMM for every dtype on CUDA
]
LINEAR_EPILOGUES = [("none", True, "bias"), ("none", False, "no bias"), ("gelu_tanh", True, "bias+gelu"),
                    ("gated_residual", True, "gated_residual"), ("gelu_erf", True, "bias+gelu_erf")]
for M, K, N in LINEAR_SHAPES:
    for epilogue, bias, name in LINEAR_EPILOGUES:
        for engine in (None, "cutlass", "cublaslt"):  # NFD_RT_GEMM: the 16-bit tensor-core GEMM engines
            case(f"linear {M}x{K}x{N} {name}" + (f" {engine}" if engine else ""),
                 linear_call(M, K, N, epilogue, bias), functools.partial(linear_ref, M, K, N, epilogue, bias),
                 long_sum=K >= 1024, env={"NFD_RT_GEMM": engine} if engine else {},
                 where=cuda_16bit if engine else (lambda device, dtype: True))
for M, K, N in [(37, 64, 50), (33, 36, 20)]:  # the exact GELU without a bias (the Oasis VAE always has one)
    case(f"linear {M}x{K}x{N} no bias+gelu_erf", linear_call(M, K, N, "gelu_erf", False),
         functools.partial(linear_ref, M, K, N, "gelu_erf", False))
for M, K, N in [(16, 128, 384), (336, 1024, 4096)]:
    case(f"linear {M}x{K}x{N} bias+gelu after linear_prepare", linear_call(M, K, N, "gelu_tanh", True, prepare=True),
         functools.partial(linear_ref, M, K, N, "gelu_tanh", True), long_sum=K >= 1024)

for M, N in [(37, 64), (5, 24)]:
    x, gate, y = randn(M, N, seed=6), randn(N, seed=7), randn(M, N, seed=8)
    case(f"gated_add {M}x{N}", lambda dev, x=x, gate=gate, y=y: ops.gated_add(x, gate, y, **dev),
         lambda x=x, gate=gate, y=y: T(y) + T(gate) * T(x))


# ---- norms, add_silu ------------------------------------------------------------------------------------------
def layernorm_ref(x, shift, scale, eps=1e-6):
    x = T(x)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * (1 + T(scale)) + T(shift)


for M, D, spread, offset, mod in [(16, 128, 3.0, 1.0, 1.0), (37, 1024, 2.0, 3.0, 0.5)]:  # an offset mean: centred var.
    x, sh, sc = (randn(M, D, seed=9, scale=spread, offset=offset), randn(D, seed=10, scale=mod),
                 randn(D, seed=11, scale=mod))
    case(f"layernorm_modulate {M}x{D}", lambda dev, x=x, sh=sh, sc=sc: ops.layernorm_modulate(x, sh, sc, 1e-6, **dev),
         lambda x=x, sh=sh, sc=sc: layernorm_ref(x, sh, sc))
for M, D in [(37, 1024), (16, 128), (5, 24), (7, 20), (3, 2304)]:
    # CUDA: a warp per row in registers for D % 8 == 0 and D <= 2048 (full and partial 256-element chunks);
    # D = 20 and 2304 take gated_add + layernorm_modulate there.
    x, gate, y = randn(M, D, seed=12), randn(D, seed=13), randn(M, D, seed=14, scale=2.0, offset=1.0)
    sh, sc = randn(D, seed=15, scale=0.5), randn(D, seed=16, scale=0.5)
    ref = (lambda x=x, gate=gate, y=y, sh=sh, sc=sc: (T(y) + T(gate) * T(x),
                                                      layernorm_ref((T(y) + T(gate) * T(x)).numpy(), sh, sc)))
    call = (lambda dev, x=x, gate=gate, y=y, sh=sh, sc=sc:
            ops.gated_add_layernorm_modulate(x, gate, y, sh, sc, 1e-6, **dev))
    case(f"gated_add_layernorm_modulate {M}x{D}", call, ref)
    if D in (1024, 128):  # CUDA: the two separate ops, the path measured before the fused kernel
        case(f"gated_add_layernorm_modulate {M}x{D} NFD_RT_FUSED_NORM=off", call, ref,
             env={"NFD_RT_FUSED_NORM": "off"}, where=only_cuda)
for M, D in [(37, 1024), (5, 24)]:  # scale_offset 0: a LayerNorm with affine (weight = scale, bias = shift)
    x, w, b = randn(M, D, seed=9, scale=2.0, offset=1.0), randn(D, seed=10, offset=1.0), randn(D, seed=11)
    case(f"layernorm_modulate {M}x{D} affine (scale_offset 0)",
         lambda dev, x=x, w=w, b=b: ops.layernorm_modulate(x, b, w, 1e-6, scale_offset=0.0, **dev),
         lambda x=x, w=w, b=b: F.layer_norm(T(x), (x.shape[1],), T(w), T(b), eps=1e-6))
x, sh, sc = randn(16, 128, seed=9, scale=3.0, offset=1.0), randn(128, seed=10), randn(128, seed=11)
case("layernorm_modulate 16x128 in place (out is x)",
     lambda dev, x=x, sh=sh, sc=sc: ops.layernorm_modulate(x, sh, sc, 1e-6, alias={"out": "x"}, **dev),
     lambda x=x, sh=sh, sc=sc: layernorm_ref(x, sh, sc))

for n in (300, 1000):
    a, b = randn(n, seed=12), randn(n, seed=13)
    case(f"add_silu {n}", lambda dev, a=a, b=b: ops.add_silu(a, b, **dev), lambda a=a, b=b: F.silu(T(a) + T(b)))
a, b = randn(300, seed=12), randn(300, seed=13)
case("add_silu 300 in place (out is a)", lambda dev, a=a, b=b: ops.add_silu(a, b, alias={"out": "a"}, **dev),
     lambda a=a, b=b: F.silu(T(a) + T(b)))


def groupnorm_ref(x, gamma, beta, groups, silu, eps=1e-6):
    out = F.group_norm(T(x)[None], groups, T(gamma), T(beta), eps=eps)[0]
    return F.silu(out) if silu else out


GROUPNORM_SHAPES = [  # C, H, W, groups, scale, offset; the last: the VAE's first level (a group over many blocks)
    (32, 16, 16, 8, 2.0, 0.5), (32, 9, 11, 8, 1.5, 0.0), (64, 56, 96, 32, 1.5, 4.0)]
for C, H, W, G, spread, offset in GROUPNORM_SHAPES:
    x, g, bt = randn(C, H, W, seed=14, scale=spread, offset=offset), randn(C, seed=15), randn(C, seed=16)
    for silu in (False, True):
        case(f"groupnorm {C}x{H}x{W} groups={G}" + (" +silu" if silu else ""),
             lambda dev, x=x, g=g, bt=bt, G=G, silu=silu: ops.groupnorm(x, g, bt, G, 1e-6, silu, **dev),
             lambda x=x, g=g, bt=bt, G=G, silu=silu: groupnorm_ref(x, g, bt, G, silu), long_sum=H * W >= 1024)
x, g, bt = randn(32, 16, 16, seed=14, scale=2.0), randn(32, seed=15), randn(32, seed=16)
case("groupnorm 32x16x16 +silu in place (out is x)",
     lambda dev, x=x, g=g, bt=bt: ops.groupnorm(x, g, bt, 8, 1e-6, True, alias={"out": "x"}, **dev),
     lambda x=x, g=g, bt=bt: groupnorm_ref(x, g, bt, 8, True))


# ---- rope_qkv_split, attention --------------------------------------------------------------------------------
def rope_case(name, H, rows, cols, hd, dims, theta, frame, slots, slot, env=None):
    N = rows * cols
    qkv = randn(N, 3 * H * hd, seed=17)

    def call(dev):
        q, k, v = ops.rope_qkv_split(qkv, frame, list(dims), theta, cols, H, slots=slots, write_slot=slot, **dev)
        return q, k[slot], v[slot], np.delete(k, slot, 0), np.delete(v, slot, 0)

    def ref():
        cos, sin = rope_angles(SimpleNamespace(grid=(rows, cols), rope_dims=dims, rope_theta=theta),
                               torch.tensor([frame]))
        rq, rk, rv = torch.from_numpy(qkv).view(1, N, 3, H, hd).unbind(2)  # [T=1, N, H, hd]
        untouched = np.zeros((slots - 1, N, H, hd), np.float32)  # the other slots of the caches
        return (apply_rope(rq, cos, sin)[0].transpose(0, 1), apply_rope(rk, cos, sin)[0], rv[0].numpy(), untouched,
                untouched)

    case(name, call, ref, mode=("close", "close", "rounded", "rounded", "rounded"), env=env or {},
         where=only_cuda if env else (lambda device, dtype: True))


tiny = configs.get("tiny")
for frame in (0, 5, 1000):
    rope_case(f"rope_qkv_split tiny frame={frame}", tiny.num_heads, *tiny.grid, tiny.head_dim, tuple(tiny.rope_dims),
              tiny.rope_theta, frame, 1, 0)
rope_case("rope_qkv_split 3x4 grid frame=7 slot 2 of 4", 2, 3, 4, 32, (8, 12, 12), 10000.0, 7, 4, 2)
# CUDA: one head per thread (NFD_RT_ROPE_GROUP=1), the path measured before heads were grouped by 4; 6 heads
# leave a partial group of 2 in the grouped kernel.
rope_case("rope_qkv_split 3x4 grid 6 heads frame=7 slot 2 of 4", 6, 3, 4, 32, (8, 12, 12), 10000.0, 7, 4, 2)
rope_case("rope_qkv_split 3x4 grid 6 heads frame=7 slot 2 of 4 NFD_RT_ROPE_GROUP=1", 6, 3, 4, 32, (8, 12, 12),
          10000.0, 7, 4, 2, env={"NFD_RT_ROPE_GROUP": "1"})


def rope_table_case(name, H, rows, cols, hd, P, max_freq, slots, slot):
    """rope_qkv_split with a (cos, sin) table [N, P, 2]: the Oasis DiT's spatial RoPE (P = hd / 2) and its ViT's
    partial one (P < hd / 2: the other pairs pass unchanged)."""
    N = rows * cols
    qkv = randn(N, 3 * H * hd, seed=17)
    ang = oasis_ref.pixel_rope_angles(rows, cols, P, max_freq)  # [N, P] float64
    table = np.stack([torch.cos(ang).numpy(), torch.sin(ang).numpy()], -1).astype(np.float32)
    table = rounded(table, "bfloat16")  # exact in every dtype

    def call(dev):
        q, k, v = ops.rope_qkv_split(qkv, 0, [hd, 0, 0], 1.0, 1, H, slots=slots, write_slot=slot, table=table, **dev)
        return q, k[slot], v[slot]

    def ref():
        cos, sin = (T(table[..., i])[:, None, :] for i in (0, 1))  # [N, 1, P]
        rq, rk, rv = T(qkv).view(N, 3, H, hd).unbind(1)
        return (oasis_ref.rotate_pairs(rq, cos, sin).transpose(0, 1), oasis_ref.rotate_pairs(rk, cos, sin),
                rv.numpy().astype(np.float32))

    case(name, call, ref, mode=("close", "close", "rounded"))


rope_table_case("rope_qkv_split table oasis-tiny spatial (P = hd / 2)", 4, 3, 6, 16, 8, 256.0, 1, 0)
rope_table_case("rope_qkv_split table partial (P = 4 of 16 pairs) slot 1 of 3", 2, 6, 12, 32, 4, 72.0, 3, 1)
rope_table_case("rope_qkv_split table partial (P = 16 of 32 pairs) 3 heads", 3, 4, 5, 64, 16, 20.0, 1, 0)


@functools.cache
def attention_inputs(H, N, hd, S, spread, kv_scale):
    return randn(H, N, hd, seed=18, scale=spread), randn(S, N, H, hd, seed=19, scale=kv_scale), \
        randn(S, N, H, hd, seed=20, scale=kv_scale)


@functools.cache
def attention_ref(H, N, hd, S, spread, kv_scale, slots):
    q, kc, vc = attention_inputs(H, N, hd, S, spread, kv_scale)
    keys = T(kc)[list(slots)].reshape(len(slots) * N, H, hd).transpose(0, 1)  # token-major caches [S, N, H, hd]
    vals = T(vc)[list(slots)].reshape(len(slots) * N, H, hd).transpose(0, 1)
    p = torch.softmax(T(q) @ keys.transpose(1, 2) / math.sqrt(hd), dim=-1)
    return (p @ vals).transpose(0, 1).reshape(N, H * hd)


def attention_kernel(impl, hd, dtype):
    """What kernels_used() must say ran: tensor cores for 16-bit `ours`, CUDA cores for float32 and simt, ours,
    cuDNN or FlashInfer's Hopper attention after attention_prepare (`auto`: the fastest that was right at open; the
    CUDA-core kernel where no variant of ours was), anything for flashinfer, flashinfer-sm90 and cudnn (they fall
    back to ours where they do not take the call: the visible slots not the cache's prefix)."""
    if impl in ("flashinfer", "flashinfer-sm90", "cudnn"):
        prefix = ""
    elif dtype == "float32" or impl == "simt":
        prefix = "simt"
    else:
        prefix = ("ours: mma", "cudnn", "flashinfer-sm90", "simt") if impl == "auto" else "ours: mma"
    return f"attention {SHORT[dtype]} hd{hd}", prefix


# The implementations behind CUDA attention (NFD_RT_ATTENTION), with split, query-tile, key-tile and softmax-form
# overrides for ours (NFD_RT_ATTENTION_SPLITS; NFD_RT_ATTENTION_ROWS=64 for head_dim 64, whose default is 128;
# NFD_RT_ATTENTION_KEYS=128, the 64 x 128 tile of head_dim 64; NFD_RT_ATTENTION_SOFTMAX=separate, whose default is
# folded); float32 takes one.
ATTENTION_VARIANTS = [("ours", {}), ("ours", {"NFD_RT_ATTENTION_SPLITS": "1"}),
                      ("ours", {"NFD_RT_ATTENTION_SPLITS": "3"}), ("ours", {"NFD_RT_ATTENTION_ROWS": "64"}),
                      ("ours", {"NFD_RT_ATTENTION_KEYS": "128"}),
                      ("ours", {"NFD_RT_ATTENTION_KEYS": "128", "NFD_RT_ATTENTION_SPLITS": "3"}),
                      ("ours", {"NFD_RT_ATTENTION_SOFTMAX": "separate"}),
                      ("ours", {"NFD_RT_ATTENTION_SOFTMAX": "separate", "NFD_RT_ATTENTION_ROWS": "64"}),
                      ("simt", {})] + ([("flashinfer", {})] if flashinfer_built() else []) + \
                     ([("flashinfer-sm90", {}), ("flashinfer-sm90", {"NFD_RT_ATTENTION_SPLITS": "3"})]
                      if flashinfer_built("flashinfer_sm90") else []) + \
                     ([("cudnn", {})] if cudnn_built() else [])


def attention_case(H, N, hd, S, slots, spread=1.0, kv_scale=1.0, note="", long_sum=None):
    shape = (H, N, hd, S, spread, kv_scale)
    name = f"attention H={H} N={N} hd={hd} slots={S} visible={list(slots)}" + (f" {note}" if note else "")
    call = lambda dev: ops.attention(*attention_inputs(*shape), list(slots), **dev)  # noqa: E731
    ref = functools.partial(attention_ref, *shape, tuple(slots))
    if long_sum is None:  # softmax and P V sum over every visible key
        long_sum = len(slots) * N >= 1024
    if hd not in (32, 64, 128):  # a documented CUDA limit: its kernels take these head_dims
        case(name, call, ref, long_sum=long_sum, raises={"cuda": (RuntimeError, f"head_dim {hd}")})
        return
    for impl, knobs in ATTENTION_VARIANTS:
        if ("NFD_RT_ATTENTION_ROWS" in knobs or "NFD_RT_ATTENTION_KEYS" in knobs) and hd != 64:
            continue  # the overrides exist for head_dim 64 only
        default = impl == "ours" and not knobs
        env = {} if default else {"NFD_RT_ATTENTION": impl, **knobs}
        # The default (NFD_RT_ATTENTION=auto) runs cuDNN on a shape attention_prepare measured it faster for.
        kernel = functools.partial(attention_kernel, "auto" if default else impl, hd)
        label = " ".join(f"{k.removeprefix('NFD_RT_ATTENTION_').lower()}={v}" for k, v in knobs.items())
        case(name + ("" if default else f" {impl}" + (f" {label}" if label else "")), call, ref,
             long_sum=long_sum, env=env, where=(lambda device, dtype: True) if default else cuda_16bit,
             kernel=kernel)


for H, N, hd, spread in [
    (4, 16, 32, 2.0),   # CPU: one block of 16 queries, head_dim two vectors of 16
    (2, 5, 8, 2.0),     # a partial query block; head_dim below one vector; keys not a multiple of 4
    (3, 37, 40, 2.0),   # three query blocks (the last partial); head_dim 16 + 16 + a tail of 8
    (1, 18, 128, 2.0),  # head_dim 128 (nfd-310m)
    (2, 16, 64, 30.0),  # scores spread over thousands: softmax nearly one-hot
    (2, 70, 48, 2.0),   # more than 64 tokens: the CPU's OpenBLAS path
    (1, 65, 64, 30.0),
]:
    for slots in ([0], [2, 0, 3], [4, 1, 2, 3, 0], [0, 1, 2, 4, 3]):
        attention_case(H, N, hd, 5, slots, spread=spread, kv_scale=2.0)
for H, N, hd, S, slots, note in [
    (4, 37, 32, 6, [5], "first frame: its own slot only"),
    (4, 37, 64, 6, [0, 3, 4, 5], "sink + window + current"),
    (2, 37, 128, 6, [0, 4, 1, 2, 5], "the ring wrapped around"),
    (2, 336, 64, 12, [0, 7, 8, 9, 10, 1, 2, 3, 4, 5, 11], "a real frame size, many splits"),
    (2, 37, 64, 4, [0, 1, 2, 3], "visible = the cache's prefix (FlashInfer takes these)"),
    (1, 5, 64, 3, [2, 0], "fewer queries and keys than one tile"),
    (2, 336, 64, 33, [0, 1, *range(12, 33), *range(2, 12)], "nfd-310m's full cache, 2 of its heads"),
]:
    attention_case(H, N, hd, S, slots, note=note, long_sum=True)  # the GPU harness' float32 bound for these


@functools.cache
def attention_same_token_ref(H, N, hd, S, spread, kv_scale, slots):
    q, kc, vc = attention_inputs(H, N, hd, S, spread, kv_scale)
    keys, vals = T(kc)[list(slots)].permute(1, 2, 0, 3), T(vc)[list(slots)].permute(1, 2, 0, 3)  # [N, H, L, hd]
    p = torch.softmax((T(q).transpose(0, 1)[:, :, None, :] @ keys.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
    return (p @ vals)[:, :, 0, :].reshape(N, H * hd)


# keys = same_token: each query over its own token of the visible slots (the Oasis DiT's temporal attention).
for H, N, hd, S, slots, spread in [
    (4, 18, 16, 6, [5], 2.0),                   # oasis-tiny, the first frame: its own slot only
    (4, 18, 16, 6, [1, 2, 3, 4, 5, 0], 2.0),    # oasis-tiny, a full window, the ring wrapped
    (2, 7, 40, 5, [3, 0, 4], 30.0),             # a head_dim of no vector multiple; scores nearly one-hot
    (2, 144, 64, 32, [*range(5, 32), *range(0, 5)], 2.0),  # oasis-500m's frame and window (2 of its heads)
]:
    shape = (H, N, hd, S, spread, 2.0)
    case(f"attention same_token H={H} N={N} hd={hd} slots={S} visible={len(slots)}",
         lambda dev, shape=shape, slots=slots: ops.attention(*attention_inputs(*shape), list(slots), keys="same_token",
                                                             **dev),
         functools.partial(attention_same_token_ref, *shape, tuple(slots)))


# ops::attention_prepare (CUDA: times the variants of ours, query tiles at head_dim 64 and both softmax forms, and
# cuDNN's SDPA at 1-16 key batches where it is built, over every slot, keeps the fastest for the shape), then the op
# as a session runs it: any variant it picks must give the same result (cuDNN runs where the visible slots are the
# cache's prefix: the middle row).
for H, N, hd, S, slots in [(2, 37, 64, 4, [3, 0, 2]), (2, 336, 64, 6, [0, 5, 1, 2, 3, 4]), (2, 40, 128, 3, [2, 0])]:
    shape = (H, N, hd, S, 1.0, 1.0)
    case(f"attention H={H} N={N} hd={hd} slots={S} visible={slots} after attention_prepare",
         lambda dev, shape=shape, slots=slots: ops.attention(*attention_inputs(*shape), list(slots), prepare=True,
                                                             **dev),
         functools.partial(attention_ref, *shape, tuple(slots)), long_sum=True,
         kernel=functools.partial(attention_kernel, "auto", hd))


# ---- patches, noise -------------------------------------------------------------------------------------------
def patchify_ref(z, p):
    C, h, w = z.shape
    return torch.from_numpy(z).reshape(C, h // p, p, w // p, p).permute(1, 3, 0, 2, 4).reshape(-1, C * p * p)


def unpatchify_ref(tokens, p, C, h, w):
    return T(tokens).reshape(h // p, w // p, C, p, p).permute(2, 0, 3, 1, 4).reshape(C, h, w)


for C, h, w, p in [(4, 8, 12, 2), (4, 6, 10, 2), (3, 6, 9, 3)]:
    z = randn(C, h, w, seed=21)
    case(f"patchify {C}x{h}x{w} p={p}", lambda dev, z=z, p=p: ops.patchify(z, p, **dev),
         lambda z=z, p=p: patchify_ref(z, p).numpy(), mode="rounded")
    tok, base = randn(h // p * (w // p), C * p * p, seed=22), randn(C, h, w, seed=23)
    case(f"unpatchify_axpy {C}x{h}x{w} p={p}",
         lambda dev, tok=tok, p=p, base=base: ops.unpatchify_axpy(tok, p, -0.25, base, **dev),
         lambda tok=tok, p=p, base=base, C=C, h=h, w=w: T(base) - 0.25 * unpatchify_ref(tok, p, C, h, w))
    case(f"unpatchify_axpy {C}x{h}x{w} p={p} keep=0.75 (a DDIM step)",
         lambda dev, tok=tok, p=p, base=base: ops.unpatchify_axpy(tok, p, -0.25, base, keep=0.75, **dev),
         lambda tok=tok, p=p, base=base, C=C, h=h, w=w:
             np.float64(np.float32(0.75)) * T(base) - 0.25 * unpatchify_ref(tok, p, C, h, w))
    nan = np.full((C, h, w), np.nan, np.float32)  # keep 0: the latent is written, never read
    case(f"unpatchify_axpy {C}x{h}x{w} p={p} keep=0 over NaN",
         lambda dev, tok=tok, p=p, nan=nan: ops.unpatchify_axpy(tok, p, 1.0, nan, keep=0.0, **dev),
         lambda tok=tok, p=p, C=C, h=h, w=w: unpatchify_ref(tok, p, C, h, w).numpy(), mode="rounded")
img20 = randn(3, 40, 60, seed=21)  # the Oasis VAE's 20 x 20 patches (a 2 x 3 grid)
case("patchify 3x40x60 p=20", lambda dev: ops.patchify(img20, 20, **dev), lambda: patchify_ref(img20, 20).numpy(),
     mode="rounded")
z1 = randn(4, 3, 5, seed=21)  # patch 1: the ViT decoder's tokens, one latent vector each
case("patchify 4x3x5 p=1", lambda dev: ops.patchify(z1, 1, **dev), lambda: patchify_ref(z1, 1).numpy(), mode="rounded")

for seed, frame, step, count in [(0, 0, 0, 256), (2**64 - 1, 7, 4, 1001), (123456789123, 2**31 - 1, 3, 5),
                                 (0x0123456789ABCDEF, 5, 2, 4099)]:
    case(f"noise_mix noise only seed={seed} frame={frame} step={step} n={count}",
         lambda dev, s=seed, f=frame, st=step, n=count: ops.noise_mix(s, f, st, shape=[n], **dev),
         lambda s=seed, f=frame, st=step, n=count: rng.normal(s, f, st, n), mode="rounded")
case("noise (float32 bits of nfd_rt.rng)", lambda dev: ops.noise(2**64 - 1, 7, 4, 1001, device=dev["device"]),
     lambda: rng.normal(2**64 - 1, 7, 4, 1001), mode="rounded", where=lambda device, dtype: dtype == "float32")
for seed, frame, step, a, b, shape in [(9, 3, 4, 0.98, 0.02, (4, 8, 8)),
                                       (0x0123456789ABCDEF, 5, 2, 0.75, 0.5, (4099,))]:
    x = randn(*shape, seed=24)
    ref = (lambda x=x, s=seed, f=frame, st=step, a=a, b=b:
           np.float64(np.float32(a)) * T(x) + np.float64(np.float32(b)) * T(rng.latent_noise(s, f, st, x.shape)))
    case(f"noise_mix a*x+b*noise {list(shape)}",
         lambda dev, x=x, s=seed, f=frame, st=step, a=a, b=b: ops.noise_mix(s, f, st, a, x, b, **dev), ref)
    case(f"noise_mix a*x+b*noise {list(shape)} in place (out is x)",
         lambda dev, x=x, s=seed, f=frame, st=step, a=a, b=b:
             ops.noise_mix(s, f, st, a, x, b, alias={"out": "x"}, **dev),
         ref)


# ---- VAE ops --------------------------------------------------------------------------------------------------
def conv_case(cin, cout, h, w, k, stride, pad):
    x, wt = randn(cin, h, w, seed=25), randn(cout, cin, k, k, seed=26, scale=1 / math.sqrt(cin * k * k))
    b, ho, wo = randn(cout, seed=27), (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    res = randn(cout, ho, wo, seed=28)
    name = f"conv2d {cin}->{cout} {h}x{w} k{k} s{stride} p{pad}"
    ref = lambda bias, r=None: F.conv2d(T(x)[None], T(wt), T(b) if bias else None, stride=stride, padding=pad)[0] + \
        (T(r) if r is not None else 0)  # noqa: E731
    case(name + " bias", lambda dev: ops.conv2d(x, wt, b, stride, pad, **dev), lambda: ref(True))
    case(name + " bias+residual", lambda dev: ops.conv2d(x, wt, b, stride, pad, res, **dev), lambda: ref(True, res))
    case(name + " no bias", lambda dev: ops.conv2d(x, wt, None, stride, pad, **dev), lambda: ref(False))
    if cin % 8 == 0:  # CUDA 16-bit: every engine by name (the default, auto, takes the fastest at the first call)
        case(name + " bias+residual im2col", lambda dev: ops.conv2d(x, wt, b, stride, pad, res, **dev),
             lambda: ref(True, res), env={"NFD_RT_CONV": "im2col"}, where=cuda_16bit)
        case(name + " bias+residual cutlass", lambda dev: ops.conv2d(x, wt, b, stride, pad, res, **dev),
             lambda: ref(True, res), env={"NFD_RT_CONV": "implicit"}, where=cuda_16bit)
        for what, bias_, res_ in [("bias+residual", b, res), ("no bias", None, None)]:
            case(f"{name} {what} cudnn",
                 lambda dev, bias_=bias_, res_=res_: ops.conv2d(x, wt, bias_, stride, pad, res_, **dev),
                 lambda bias_=bias_, res_=res_: ref(bias_ is not None, res_), env={"NFD_RT_CONV": "cudnn"},
                 where=cuda_16bit_cudnn)


for cin, cout, k, stride, pad, hw in [
    (4, 64, 3, 1, 1, 8), (32, 32, 3, 2, 1, 16), (32, 64, 1, 1, 0, 8), (3, 8, 3, 1, 1, 11),
    (64, 64, 3, 1, 1, 16), (64, 32, 3, 1, 1, 32), (32, 32, 3, 1, 1, 64), (5, 12, 3, 1, 1, 18),  # the decoder's sizes
    # the CPU's direct path for <= 4 outputs (RGB conv_out): 16-column runs, a tail of columns, 1 to 4 outputs
    (32, 3, 3, 1, 1, 64), (7, 1, 3, 1, 1, 19), (5, 2, 3, 1, 1, 5), (9, 4, 3, 1, 1, 33),
]:
    conv_case(cin, cout, hw, hw, k, stride, pad)
for cin, cout, h, w in [
    (16, 24, 32, 48),   # CPU Winograd F(2x2, 3x3): even sides, >= 1024 pixels, not square
    (8, 16, 28, 48),    # the shape class of nfd-130m's decoder (224 x 384 frames / 8)
    (8, 16, 33, 32),    # an odd side: im2col instead
    (48, 64, 20, 256),  # bands of 4, 4 and 2 tile rows (CPU scratch is bounded at 4 MiB)
    (64, 3, 130, 256),  # the direct path for <= 4 outputs in bands of 61, 61 and 8 rows
]:
    conv_case(cin, cout, h, w, 3, 1, 1)
for cin, cout, h, w, k, stride, pad in [  # CUDA: the tensor-core implicit GEMM (Cin % 8 == 0; Cout padded to 8)
    (8, 16, 13, 11, 3, 1, 1), (16, 16, 13, 12, 3, 2, 1), (16, 8, 9, 9, 1, 1, 0), (64, 64, 24, 40, 3, 1, 1),
    (16, 12, 7, 10, 3, 1, 1), (64, 3, 20, 36, 3, 1, 1),
    (4, 8, 10, 10, 3, 1, 1),  # and the CUDA-core path (Cin = 4)
]:
    conv_case(cin, cout, h, w, k, stride, pad)


def upconv_ref(x, wt, b):
    up = F.interpolate(T(x)[None], scale_factor=2, mode="nearest")
    return F.conv2d(up, T(wt), T(b) if b is not None else None, padding=1)[0]


for cin, cout, h, w in [(64, 64, 8, 8), (32, 32, 32, 32), (3, 5, 5, 7), (16, 8, 6, 5), (16, 3, 5, 9),
                        (32, 32, 30, 128)]:  # the last: CPU bands of 12, 12 and 6 input rows
    x, wt, b = randn(cin, h, w, seed=29), randn(cout, cin, 3, 3, seed=30, scale=1 / math.sqrt(cin * 9)), \
        randn(cout, seed=31)
    case(f"upsample2x_conv2d {cin}->{cout} {h}x{w} bias",
         lambda dev, x=x, wt=wt, b=b: ops.upsample2x_conv2d(x, wt, b, **dev),
         lambda x=x, wt=wt, b=b: upconv_ref(x, wt, b))
    case(f"upsample2x_conv2d {cin}->{cout} {h}x{w} no bias",
         lambda dev, x=x, wt=wt: ops.upsample2x_conv2d(x, wt, **dev), lambda x=x, wt=wt: upconv_ref(x, wt, None))
    if cin % 8 == 0:  # CUDA 16-bit: CUTLASS and cuDNN (its NHWC form) by name
        for engine, where in [("implicit", cuda_16bit), ("cudnn", cuda_16bit_cudnn)]:
            case(f"upsample2x_conv2d {cin}->{cout} {h}x{w} bias {engine}",
                 lambda dev, x=x, wt=wt, b=b: ops.upsample2x_conv2d(x, wt, b, **dev),
                 lambda x=x, wt=wt, b=b: upconv_ref(x, wt, b), env={"NFD_RT_CONV": engine}, where=where)

x = randn(3, 5, 7, seed=32)
case("upsample_nearest2x 3x5x7", lambda dev, x=x: ops.upsample_nearest2x(x, **dev),
     lambda x=x: F.interpolate(torch.from_numpy(x)[None], scale_factor=2, mode="nearest")[0].numpy(), mode="rounded")

for H, W in [(16, 20), (8, 9)]:
    img = np.clip(randn(3, H, W, seed=33, scale=0.7), -1.2, 1.2).astype(np.float32)
    img[0, 0, :6] = [-1.0, 1.0, 0.0, -1.5, 3.0, -2.0]  # the ends of the range and beyond
    case(f"to_uint8 3x{H}x{W}", lambda dev, img=img: ops.to_uint8(img, **dev),
         lambda img=img: images_to_frames(torch.from_numpy(img)[None])[0].numpy(), mode="exact")
    frame_u8 = np.random.default_rng(34).integers(0, 256, (H, W, 3), dtype=np.uint8)
    case(f"from_uint8 {H}x{W}x3", lambda dev, f=frame_u8: ops.from_uint8(f, **dev),
         lambda f=frame_u8: frames_to_images(torch.from_numpy(f)[None])[0].numpy(), mode="rounded")
    # Oasis: truncation to uint8 (upstream's .byte()) and (u / 255) * 2 - 1 (reference/oasis.py).
    case(f"to_uint8 3x{H}x{W} truncated", lambda dev, img=img: ops.to_uint8(img, pixels="truncated", **dev),
         lambda img=img: oasis_ref.images_to_frames(torch.from_numpy(img)[None])[0].numpy(), mode="exact")
    case(f"from_uint8 {H}x{W}x3 truncated", lambda dev, f=frame_u8: ops.from_uint8(f, pixels="truncated", **dev),
         lambda f=frame_u8: oasis_ref.frames_to_images(torch.from_numpy(f)[None])[0].numpy(), mode="rounded")
steps = np.arange(-1.0, 1.0 + 1e-9, 2.0 / 255.0 / 7.0, dtype=np.float32)  # values at and between the levels
edge = np.stack([steps, -steps, steps * 1.5])[:, None, :]
case("to_uint8 truncated at the level boundaries", lambda dev: ops.to_uint8(edge, pixels="truncated", **dev),
     lambda: oasis_ref.images_to_frames(torch.from_numpy(edge)[None])[0].numpy(), mode="exact",
     where=lambda device, dtype: dtype == "float32")


# ---- Waypoint-1.5: GQA, RMS norms, the QK-norm RoPE variant, SiLU, TAEHV's ops ---------------------------------
for M, K, N in [(37, 64, 50), (16, 128, 384), (33, 36, 20)]:
    for bias in (True, False):
        case(f"linear {M}x{K}x{N} {'bias+' if bias else 'no bias+'}silu", linear_call(M, K, N, "silu", bias),
             lambda M=M, K=K, N=N, bias=bias: F.silu(linear_product(M, K, N, bias)))


def rms_ref(x, shift, scale, eps=waypoint_ref.RMS_EPS):
    x = T(x)
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * (1 + T(scale)) + T(shift)


for M, D in [(16, 128), (37, 1024), (5, 24)]:
    x, sh, sc = randn(M, D, seed=9, scale=3.0, offset=1.0), randn(D, seed=10), randn(D, seed=11)
    case(f"layernorm_modulate {M}x{D} rms",
         lambda dev, x=x, sh=sh, sc=sc: ops.layernorm_modulate(x, sh, sc, waypoint_ref.RMS_EPS, norm="rms", **dev),
         lambda x=x, sh=sh, sc=sc: rms_ref(x, sh, sc))
    xg, gate, y = randn(M, D, seed=12), randn(D, seed=13), randn(M, D, seed=14, scale=2.0, offset=1.0)
    case(f"gated_add_layernorm_modulate {M}x{D} rms",
         lambda dev, x=xg, gate=gate, y=y, sh=sh, sc=sc:
             ops.gated_add_layernorm_modulate(x, gate, y, sh, sc, waypoint_ref.RMS_EPS, norm="rms", **dev),
         lambda x=xg, gate=gate, y=y, sh=sh, sc=sc: (T(y) + T(gate) * T(x),
                                                      rms_ref((T(y) + T(gate) * T(x)).numpy(), sh, sc)))
a3 = randn(4, 5, 6, seed=12)
case("add_silu 4x5x6 without b", lambda dev: ops.add_silu(a3, **dev), lambda: F.silu(T(a3)))


def waypoint_rope_case(name, cfg, frame, slots, slot, v_mix=None):
    """rope_qkv_split as Waypoint's layers call it: GQA widths, QK-norm, the spatial table + time pairs, the
    de-interleaved output and (layers > 0) the value residual, against reference/waypoint.py."""
    H, Hkv, hd, N = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.tokens_per_frame
    qkv, q0 = randn(N, (H + 2 * Hkv) * hd, seed=17), randn(N, (H + 2 * Hkv) * hd, seed=18)
    cos, sin = waypoint_ref.rope_angles(cfg, torch.tensor([frame]))  # [1, N, hd/2]
    P = hd // 4  # the spatial pairs: (cos, sin) from the table; the time pairs from the frame
    table = np.stack([cos[0, :, :P].numpy(), sin[0, :, :P].numpy()], -1)

    def call(dev):
        q, k, v = ops.rope_qkv_split(qkv, frame, [hd, 0, 0], cfg.rope_theta, 1, H, slots=slots, write_slot=slot,
                                     table=table, kv_heads=Hkv, qk_norm_eps=waypoint_ref.RMS_EPS, deinterleave=True,
                                     time_pairs=hd // 2 - P, time_scale=float(cfg.time_stride),
                                     v0=None if v_mix is None else q0, v_mix=v_mix or 0.0, **dev)
        return q, k[slot], v[slot]

    def ref():
        rq, rk, rv = torch.from_numpy(qkv).split([H * hd, Hkv * hd, Hkv * hd], -1)
        rq, rk, rv = rq.view(1, N, H, hd), rk.view(1, N, Hkv, hd), rv.view(N, Hkv, hd)
        if v_mix is not None:
            v0 = torch.from_numpy(q0)[:, (H + Hkv) * hd:].view(N, Hkv, hd)
            rv = rv + torch.tensor(np.float32(v_mix)) * (v0 - rv)
        q = waypoint_ref.apply_rope(waypoint_ref.rms_norm(rq), cos, sin)[0].transpose(0, 1)
        return q, waypoint_ref.apply_rope(waypoint_ref.rms_norm(rk), cos, sin)[0], rv

    case(name, call, ref, mode=("close", "close", "close" if v_mix is not None else "rounded"))


wp_tiny = configs.get("waypoint-tiny")
for frame in (0, 7, 1000):
    waypoint_rope_case(f"rope_qkv_split waypoint-tiny frame={frame}", wp_tiny, frame, 3, 1)
waypoint_rope_case("rope_qkv_split waypoint-tiny frame=9 value residual", wp_tiny, 9, 4, 3, v_mix=0.37)
wp_hd64 = wp_tiny.replace(hidden_size=256, num_heads=4, num_kv_heads=2)  # the 1B model's head_dim 64
waypoint_rope_case("rope_qkv_split waypoint hd64 frame=130 value residual", wp_hd64, 130, 2, 0, v_mix=0.8)
qkv_gqa = randn(12, (4 + 2 * 2) * 32, seed=17)


def gqa_rope_ref():
    cos, sin = rope_angles(SimpleNamespace(grid=(3, 4), rope_dims=(8, 12, 12), rope_theta=1e4), torch.tensor([7]))
    rq, rk, rv = torch.from_numpy(qkv_gqa).split([4 * 32, 2 * 32, 2 * 32], -1)
    return (apply_rope(rq.view(1, 12, 4, 32), cos, sin)[0].transpose(0, 1),
            apply_rope(rk.view(1, 12, 2, 32), cos, sin)[0], rv.view(12, 2, 32).numpy())


case("rope_qkv_split GQA 4 of 2 heads, 3D RoPE", lambda dev: (lambda q, k, v: (q, k[1], v[1]))(
         *ops.rope_qkv_split(qkv_gqa, 7, [8, 12, 12], 1e4, 4, 4, slots=2, write_slot=1, kv_heads=2, **dev)),
     gqa_rope_ref, mode=("close", "close", "rounded"))


@functools.cache
def gqa_inputs(H, Hkv, N, hd, S):
    return randn(H, N, hd, seed=18, scale=2.0), randn(S, N, Hkv, hd, seed=19, scale=2.0), \
        randn(S, N, Hkv, hd, seed=20, scale=2.0)


def gqa_ref(H, Hkv, N, hd, S, slots, same_token=False):
    q, kc, vc = (T(a) for a in gqa_inputs(H, Hkv, N, hd, S))
    kc, vc = kc.repeat_interleave(H // Hkv, dim=2), vc.repeat_interleave(H // Hkv, dim=2)  # head h reads h // group
    if same_token:
        keys, vals = kc[list(slots)].permute(1, 2, 0, 3), vc[list(slots)].permute(1, 2, 0, 3)
        p = torch.softmax((q.transpose(0, 1)[:, :, None, :] @ keys.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        return (p @ vals)[:, :, 0, :].reshape(N, H * hd)
    keys = kc[list(slots)].reshape(len(slots) * N, H, hd).transpose(0, 1)
    vals = vc[list(slots)].reshape(len(slots) * N, H, hd).transpose(0, 1)
    p = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(hd), dim=-1)
    return (p @ vals).transpose(0, 1).reshape(N, H * hd)


for H, Hkv, N, hd, S, slots in [
    (4, 2, 8, 16, 5, [3, 0, 4]),           # waypoint-tiny: 8 tokens, head_dim 16 (CPU's register kernel)
    (4, 1, 37, 32, 4, [1, 2, 3]),          # multi-query
    (4, 2, 128, 64, 17, list(range(1, 17)) + [0]),  # the 360P model's frame (2 of its 16 K/V heads), a full window
]:
    case(f"attention GQA H={H} Hkv={Hkv} N={N} hd={hd} visible={len(slots)}",
         lambda dev, a=(H, Hkv, N, hd, S), slots=slots: ops.attention(*gqa_inputs(*a), list(slots), **dev),
         functools.partial(gqa_ref, H, Hkv, N, hd, S, tuple(slots)), long_sum=len(slots) * N >= 1024,
         raises={"cuda": (RuntimeError, f"head_dim {hd}")} if hd not in (32, 64, 128) else {})
case("attention same_token GQA H=4 Hkv=2 N=6 hd=16",
     lambda dev: ops.attention(*gqa_inputs(4, 2, 6, 16, 3), [2, 0], keys="same_token", **dev),
     functools.partial(gqa_ref, 4, 2, 6, 16, 3, (2, 0), True))

for cin, cout, h, w, k, stride, pad in [(16, 16, 8, 16, 3, 1, 1), (8, 4, 9, 7, 3, 1, 1), (32, 16, 16, 32, 3, 1, 1),
                                        (8, 8, 16, 16, 3, 2, 1), (16, 32, 6, 8, 1, 1, 0)]:
    x, wt = randn(cin, h, w, seed=25), randn(cout, cin, k, k, seed=26, scale=1 / math.sqrt(cin * k * k))
    b, ho, wo = randn(cout, seed=27), (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    res = randn(cout, ho, wo, seed=28)
    name = f"conv2d {cin}->{cout} {h}x{w} k{k} s{stride} p{pad}"
    case(name + " bias+relu",
         lambda dev, x=x, wt=wt, b=b, s=stride, p=pad: ops.conv2d(x, wt, b, s, p, activation="relu", **dev),
         lambda x=x, wt=wt, b=b, s=stride, p=pad: F.relu(F.conv2d(T(x)[None], T(wt), T(b), stride=s, padding=p)[0]))
    case(name + " residual+relu",
         lambda dev, x=x, wt=wt, r=res, s=stride, p=pad: ops.conv2d(x, wt, None, s, p, r, activation="relu", **dev),
         lambda x=x, wt=wt, r=res, s=stride, p=pad: F.relu(F.conv2d(T(x)[None], T(wt), stride=s, padding=p)[0] + T(r)))
    case(name + " bias+clamp01",
         lambda dev, x=x, wt=wt, b=b, s=stride, p=pad: ops.conv2d(x, wt, b, s, p, activation="clamp01", **dev),
         lambda x=x, wt=wt, b=b, s=stride, p=pad: F.conv2d(T(x)[None], T(wt), T(b), stride=s, padding=p)[0].clamp(0, 1))

xs = randn(6, 5, 7, seed=36, scale=4.0)
case("softcap 6x5x7 cap 3", lambda dev: ops.softcap(xs, 3.0, **dev), lambda: torch.tanh(T(xs) / 3) * 3)
case("softcap 6x5x7 in place (out is x)", lambda dev: ops.softcap(xs, 3.0, alias={"out": "x"}, **dev),
     lambda: torch.tanh(T(xs) / 3) * 3)
for C, H, W, r in [(12, 5, 7, 2), (27, 4, 3, 3), (3, 1, 1, 1)]:
    x = randn(C, H, W, seed=37)
    case(f"pixel_shuffle {C}x{H}x{W} r={r}", lambda dev, x=x, r=r: ops.pixel_shuffle(x, r, **dev),
         lambda x=x, r=r: F.pixel_shuffle(torch.from_numpy(x)[None], r)[0].numpy(), mode="rounded")
    big = randn(C // (r * r), H * r, W * r, seed=38)
    case(f"pixel_shuffle {C // (r * r)}x{H * r}x{W * r} r={r} inverse",
         lambda dev, x=big, r=r: ops.pixel_shuffle(x, r, inverse=True, **dev),
         lambda x=big, r=r: F.pixel_unshuffle(torch.from_numpy(x)[None], r)[0].numpy(), mode="rounded")
for C, H, W, Ho, Wo in [(3, 64, 128, 72, 128), (3, 72, 128, 64, 128), (3, 8, 16, 9, 20), (2, 9, 11, 4, 5),
                        (3, 16, 32, 16, 32), (1, 1, 1, 3, 2)]:  # Waypoint's 16:8 <-> 16:9, up, down, the identity
    x = randn(C, H, W, seed=39)
    case(f"resize_bilinear {C}x{H}x{W} -> {Ho}x{Wo}", lambda dev, x=x, Ho=Ho, Wo=Wo: ops.resize_bilinear(x, Ho, Wo, **dev),
         lambda x=x, Ho=Ho, Wo=Wo: F.interpolate(torch.from_numpy(x)[None], size=(Ho, Wo), mode="bilinear",
                                                 align_corners=False)[0].double())
unit = np.clip(randn(3, 8, 9, seed=33, scale=0.4, offset=0.5), -0.2, 1.2).astype(np.float32)
unit[0, 0, :5] = [0.0, 1.0, 0.5 / 255, 1.5 / 255, 2.5 / 255]  # the ends and halfway points (round half to even)
case("to_uint8 3x8x9 unit", lambda dev: ops.to_uint8(unit, pixels="unit", **dev),
     lambda: torch.round(torch.from_numpy(unit).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy(),
     mode="exact",  # reference/waypoint.py images_to_frames without its resize
     where=lambda device, dtype: dtype == "float32")
unit16 = rounded(unit, "bfloat16")  # exact in every dtype: the same pixels from a bf16 or f16 image
case("to_uint8 3x8x9 unit (values exact in 16 bits)", lambda dev: ops.to_uint8(unit16, pixels="unit", **dev),
     lambda: torch.round(torch.from_numpy(unit16).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy(),
     mode="exact")
fu8 = np.random.default_rng(34).integers(0, 256, (8, 9, 3), dtype=np.uint8)
case("from_uint8 8x9x3 unit", lambda dev: ops.from_uint8(fu8, pixels="unit", **dev),
     lambda: torch.from_numpy(fu8).permute(2, 0, 1).float().numpy() / np.float32(255.0), mode="rounded")


# ---- copy -----------------------------------------------------------------------------------------------------
def copy_ref(x, *dtypes):
    t = torch.from_numpy(x)
    for dt in dtypes:
        t = t.to(TORCH_DTYPE[dt])
    return t.float().numpy()


xc = randn(777, seed=35)
for src in ("float32", "bfloat16", "float16"):
    case(f"copy {SHORT[src]} -> dtype", lambda dev, src=src: ops.copy(xc, src_dtype=src, **dev),
         lambda src=src: copy_ref(xc, src), mode="rounded",
         raises={"cpu": (RuntimeError, "converts only between f32 and bf16")} if src == "float16" else {})
case("copy in place (dst is src)", lambda dev: ops.copy(xc, alias={"dst": "src"}, **dev), lambda: xc, mode="rounded")
case("copy host f32 -> device", lambda dev: ops.copy(xc, src_device="cpu", src_dtype="float32", **dev), lambda: xc,
     mode="rounded", where=only_cuda)
case("copy device -> host f32", lambda dev: ops.copy(xc, src_device=dev["device"], src_dtype=dev["dtype"],
                                                      device="cpu", dtype="float32"), lambda: xc, mode="rounded",
     where=only_cuda)


# ---- the table on every backend -------------------------------------------------------------------------------
def backend_params(rows, applies):
    params = []
    for row in rows:
        for device, dtype in BACKENDS:
            if applies(row, device, dtype):
                marks = [pytest.mark.cuda] if device == "cuda" else []
                if device == "cpu" and dtype == "bfloat16" and not CPU_BF16["ok"]:
                    marks.append(pytest.mark.skip(reason=f"no bf16 on this CPU: {CPU_BF16['why']}"))
                params.append(pytest.param(row, device, dtype, id=f"{row.id} @ {device} {SHORT[dtype]}", marks=marks))
    return params


@pytest.fixture
def clean_env(monkeypatch):
    for name in SWITCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("row,device,dtype", backend_params(CASES, lambda row, device, dtype: row.where(device, dtype)))
def test_op(row: Case, device, dtype, clean_env):
    for name, value in row.env.items():
        clean_env.setenv(name, value)
    dev = dict(device=device, dtype=dtype)
    if device in row.raises:
        error, match = row.raises[device]
        with pytest.raises(error, match=match):
            row.call(dev)
        return
    if row.kernel and device == "cuda":
        _core.clear_kernels_used()
    got, ref = row.call(dev), row.ref()
    outputs = got if isinstance(got, tuple) else (got,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    modes = row.mode if isinstance(row.mode, tuple) else (row.mode,) * len(refs)
    assert len(outputs) == len(refs)
    for k, (g, r, mode) in enumerate(zip(outputs, refs, modes)):
        compare(g, r, mode, dtype, row.long_sum, f"{row.id} output {k}")
    if row.kernel and device == "cuda":
        key, prefix = row.kernel(dtype)
        ran = _core.kernels_used().get(key, "")
        assert ran and ran.startswith(prefix), f"{key}: ran {ran!r}, expected {prefix!r}..."


# ---- the contracts --------------------------------------------------------------------------------------------
@dataclass
class Bad:
    """A row of the contract table: `call(dev, other)` hands the op an argument its contract refuses (other: a
    float dtype that is not the backend's); the error must match `match` and read alike on every backend."""

    id: str
    call: Callable[[dict, str], Any]
    match: str
    error: type = ValueError
    cuda_only: bool = False  # an argument on another device, or a CUDA switch
    env: dict = field(default_factory=dict)


def r(*shape, seed=40):
    return randn(*shape, seed=seed)


x48, w58, w88 = r(4, 8), r(5, 8, seed=41), r(8, 8, seed=42)
q, kc = r(2, 4, 8), r(3, 4, 2, 8, seed=43)
q64, kc64 = r(2, 4, 64), r(3, 4, 2, 64, seed=43)
img, c3 = r(3, 4, 5), r(3, 6, 6, seed=44)
CONTRACTS = [
    Bad("linear x", lambda d, o: ops.linear(r(4, 9), w58, **d), r"ops::linear: x must be \[M, K\] with K = 8, got"),
    Bad("linear w", lambda d, o: ops.linear(x48, r(8), **d), r"ops::linear: w must be \[N, K\], got"),
    Bad("linear y", lambda d, o: ops.linear(x48, w58, shapes={"y": [4, 6]}, **d),
        r"ops::linear: y must be \[M, N\] with M = 4, N = 5, got"),
    Bad("linear bias", lambda d, o: ops.linear(x48, w58, r(4), **d), r"ops::linear: bias must be \[N\] with N = 5"),
    Bad("linear gate missing", lambda d, o: ops.linear(x48, w58, epilogue="gated_residual", y=r(4, 5), **d),
        r"ops::linear: epilogue gated_residual needs a gate, got none"),
    Bad("linear gate", lambda d, o: ops.linear(x48, w58, epilogue="gated_residual", gate=r(3), y=r(4, 5), **d),
        r"ops::linear: gate must be \[N\] with N = 5"),
    Bad("linear dtype", lambda d, o: ops.linear(x48, w58, dtypes={"w": o}, **d), r"ops::linear: w must have y's dtype"),
    Bad("linear y not float", lambda d, o: ops.linear(x48, w58, dtypes={"y": "uint8"}, **d),
        r"ops::linear: y must be f32, bf16 or f16, got u8"),
    Bad("linear aliasing", lambda d, o: ops.linear(x48, w88, alias={"y": "x"}, **d),
        r"ops::linear: x and y must not overlap in memory"),
    Bad("linear_prepare x", lambda d, o: ops.linear(r(4, 9), w58, prepare=True, **d),
        r"ops::linear_prepare: x must be \[M, K\] with K = 8"),
    Bad("linear device", lambda d, o: ops.linear(x48, w58, devices={"x": "cpu"}, dtypes={"x": "float32"}, **d),
        r"ops::linear: x must be on y's device \(cuda\), got", cuda_only=True),
    Bad("gated_add y", lambda d, o: ops.gated_add(r(8), r(8), r(8), **d), r"ops::gated_add: y must be \[M, N\]"),
    Bad("gated_add x", lambda d, o: ops.gated_add(r(4, 6), r(5), r(4, 5), **d),
        r"ops::gated_add: x must have y's shape"),
    Bad("gated_add gate", lambda d, o: ops.gated_add(r(4, 5), r(4), r(4, 5), **d),
        r"ops::gated_add: gate must be \[N\] with N = 5"),
    Bad("gated_add dtype", lambda d, o: ops.gated_add(r(4, 5), r(5), r(4, 5), dtypes={"gate": o}, **d),
        r"ops::gated_add: gate must have y's dtype"),
    Bad("gated_add aliasing", lambda d, o: ops.gated_add(r(4, 5), r(5), r(4, 5), alias={"y": "x"}, **d),
        r"ops::gated_add: x and y must not overlap in memory"),
    Bad("gated_add_layernorm_modulate y", lambda d, o: ops.gated_add_layernorm_modulate(r(8), r(8), r(8), r(8), r(8), **d),
        r"ops::gated_add_layernorm_modulate: y must be \[M, D\], got"),
    Bad("gated_add_layernorm_modulate gate",
        lambda d, o: ops.gated_add_layernorm_modulate(x48, r(7), x48.copy(), r(8), r(8), **d),
        r"ops::gated_add_layernorm_modulate: gate must be \[D\] with D = 8"),
    Bad("gated_add_layernorm_modulate aliasing",
        lambda d, o: ops.gated_add_layernorm_modulate(x48, r(8), x48.copy(), r(8), r(8), alias={"out": "y"}, **d),
        r"ops::gated_add_layernorm_modulate: y and out must not overlap in memory"),
    Bad("layernorm_modulate x", lambda d, o: ops.layernorm_modulate(r(2, 3, 8), r(8), r(8), **d),
        r"ops::layernorm_modulate: x must be \[M, D\], got"),
    Bad("layernorm_modulate shift", lambda d, o: ops.layernorm_modulate(x48, r(7), r(8), **d),
        r"ops::layernorm_modulate: shift must be \[D\] with D = 8"),
    Bad("layernorm_modulate scale", lambda d, o: ops.layernorm_modulate(x48, r(8), r(9), **d),
        r"ops::layernorm_modulate: scale must be \[D\] with D = 8"),
    Bad("layernorm_modulate out", lambda d, o: ops.layernorm_modulate(x48, r(8), r(8), shapes={"out": [4, 9]}, **d),
        r"ops::layernorm_modulate: out must have x's shape"),
    Bad("layernorm_modulate dtype", lambda d, o: ops.layernorm_modulate(x48, r(8), r(8), dtypes={"scale": o}, **d),
        r"ops::layernorm_modulate: scale must have out's dtype"),
    Bad("add_silu a", lambda d, o: ops.add_silu(r(2, 3), r(6), **d), r"ops::add_silu: a must be \[n\], got"),
    Bad("add_silu b", lambda d, o: ops.add_silu(r(6), r(5), **d), r"ops::add_silu: b must be \[n\] with n = 6"),
    Bad("add_silu dtype", lambda d, o: ops.add_silu(r(6), r(6), dtypes={"b": o}, **d),
        r"ops::add_silu: b must have out's dtype"),
    Bad("rope_qkv_split qkv", lambda d, o: ops.rope_qkv_split(r(12, 100), 0, [8, 4, 4], 1e4, 4, 2, **d),
        r"ops::rope_qkv_split: qkv must be \[N, \(H \+ 2 \* Hkv\) \* hd\] with N = 12, \(H \+ 2 \* Hkv\) \* hd = 96"),
    Bad("rope_qkv_split rope_dims", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 2], 1e4, 4, 2, **d),
        r"ops::rope_qkv_split: rope_dims must be even and sum to head_dim 16, got \[8, 4, 2\]"),
    Bad("rope_qkv_split grid_cols", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 5, 2, **d),
        r"ops::rope_qkv_split: grid_cols must divide the token count N = 12, got 5"),
    Bad("rope_qkv_split write_slot", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2, slots=4,
                                                                      write_slot=4, **d),
        r"ops::rope_qkv_split: write_slot 4 outside the cache of 4 slots"),
    Bad("rope_qkv_split k_cache", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2,
                                                                   shapes={"k_cache": [1, 12, 16, 2]}, **d),
        r"ops::rope_qkv_split: k_cache must be \[slots, N, Hkv, hd\] with N = 12, hd = 16"),
    Bad("rope_qkv_split v_cache", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2, slots=2,
                                                                   shapes={"v_cache": [1, 12, 2, 16]}, **d),
        r"ops::rope_qkv_split: v_cache must have k_cache's shape"),
    Bad("rope_qkv_split aliasing", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2,
                                                                    alias={"v_cache": "k_cache"}, **d),
        r"ops::rope_qkv_split: k_cache and v_cache must not overlap in memory"),
    Bad("rope_qkv_split dtype", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2,
                                                                 dtypes={"k_cache": o}, **d),
        r"ops::rope_qkv_split: k_cache must have q_out's dtype"),
    Bad("rope_qkv_split table shape", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [16, 0, 0], 1e4, 1, 2,
                                                                       table=r(11, 4, 2), **d),
        r"ops::rope_qkv_split: table must be \[N, P, 2\] with N = 12"),
    Bad("rope_qkv_split table pairs", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [16, 0, 0], 1e4, 1, 2,
                                                                       table=r(12, 9, 2), **d),
        r"ops::rope_qkv_split: table must rotate 1 to head_dim / 2 = 8 pairs, got P = 9"),
    Bad("rope_qkv_split table odd head_dim", lambda d, o: ops.rope_qkv_split(r(12, 90), 0, [16, 0, 0], 1e4, 1, 2,
                                                                           table=r(12, 7, 2), **d),
        r"ops::rope_qkv_split: head_dim must be even, got 15"),
    Bad("rope_qkv_split table dtype", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [16, 0, 0], 1e4, 1, 2,
                                                                       table=r(12, 8, 2), dtypes={"table": o}, **d),
        r"ops::rope_qkv_split: table must have q_out's dtype"),
    Bad("attention same_token visible slot", lambda d, o: ops.attention(q64, kc64, kc64, [0, 3], keys="same_token",
                                                                        **d),
        r"ops::attention: visible slot 3 outside the cache of 3 slots"),
    Bad("attention same_token k_cache", lambda d, o: ops.attention(q, r(3, 5, 2, 8), r(3, 5, 2, 8), [0],
                                                                   keys="same_token", **d),
        r"ops::attention: k_cache must be \[slots, N, Hkv, hd\] with N = 4, hd = 8"),
    Bad("attention q", lambda d, o: ops.attention(r(4, 8), kc, kc, [0], **d),
        r"ops::attention: q must be \[H, N, hd\], got"),
    Bad("attention k_cache", lambda d, o: ops.attention(q, r(3, 5, 2, 8), r(3, 5, 2, 8), [0], **d),
        r"ops::attention: k_cache must be \[slots, N, Hkv, hd\] with N = 4, hd = 8"),
    Bad("attention v_cache", lambda d, o: ops.attention(q, kc, r(2, 4, 2, 8), [0], **d),
        r"ops::attention: v_cache must have k_cache's shape"),
    Bad("attention out", lambda d, o: ops.attention(q, kc, kc, [0], shapes={"out": [4, 8]}, **d),
        r"ops::attention: out must be \[N, H \* hd\] with N = 4, H \* hd = 16"),
    Bad("attention visible slot", lambda d, o: ops.attention(q64, kc64, kc64, [0, 3], **d),
        r"ops::attention: visible slot 3 outside the cache of 3 slots"),
    Bad("attention visible slot far out", lambda d, o: ops.attention(q64, kc64, kc64, [1, 9, 0], **d),
        r"ops::attention: visible slot 9 outside the cache of 3 slots"),
    Bad("attention num_visible", lambda d, o: ops.attention(q64, kc64, kc64, [], **d),
        r"ops::attention: num_visible must be 1..1024, got 0"),
    Bad("attention dtype", lambda d, o: ops.attention(q64, kc64, kc64, [0], dtypes={"v_cache": o}, **d),
        r"ops::attention: v_cache must have out's dtype"),
    Bad("attention device", lambda d, o: ops.attention(q64, kc64, kc64, [0], devices={"k_cache": "cpu"},
                                                           dtypes={"k_cache": "float32"}, **d),
        r"ops::attention: k_cache must be on out's device \(cuda\)", cuda_only=True),
    Bad("attention NFD_RT_ATTENTION", lambda d, o: ops.attention(q64, kc64, kc64, [0], **d),
        r"NFD_RT_ATTENTION must be one of 'auto', 'ours', 'cudnn', 'flashinfer', 'flashinfer-sm90', 'simt', "
        r"got 'bogus'", cuda_only=True,
        env={"NFD_RT_ATTENTION": "bogus"}),
    Bad("patchify latent", lambda d, o: ops.patchify(r(4, 8), 2, **d),
        r"ops::patchify: latent must be \[C, h, w\], got"),
    Bad("patchify patch", lambda d, o: ops.patchify(r(4, 6, 9), 2, **d),
        r"ops::patchify: patch must be > 0 and divide the latent's h and w, got patch 2"),
    Bad("patchify patch 0", lambda d, o: ops.patchify(r(4, 6, 8), 0, **d),
        r"ops::patchify: patch must be > 0 and divide the latent's h and w, got patch 0"),
    Bad("patchify tokens", lambda d, o: ops.patchify(r(4, 6, 8), 2, shapes={"tokens": [12, 15]}, **d),
        r"ops::patchify: tokens must be \[N, C \* patch \* patch\] with N = 12, C \* patch \* patch = 16"),
    Bad("patchify dtype", lambda d, o: ops.patchify(r(4, 6, 8), 2, dtypes={"tokens": o}, **d),
        r"ops::patchify: tokens must have latent's dtype"),
    Bad("unpatchify_axpy tokens", lambda d, o: ops.unpatchify_axpy(r(12, 15), 2, 0.5, r(4, 6, 8), **d),
        r"ops::unpatchify_axpy: tokens must be \[N, C \* patch \* patch\] with N = 12"),
    Bad("unpatchify_axpy tokens keep=0", lambda d, o: ops.unpatchify_axpy(r(12, 15), 2, 0.5, r(4, 6, 8), keep=0.0, **d),
        r"ops::unpatchify_axpy: tokens must be \[N, C \* patch \* patch\] with N = 12"),
    Bad("noise_mix x", lambda d, o: ops.noise_mix(0, 0, 0, 1.0, r(4, 5), 1.0, shapes={"out": [4, 6]}, **d),
        r"ops::noise_mix: x must have out's shape"),
    Bad("noise_mix step", lambda d, o: ops.noise_mix(0, 0, -1, shape=[8], **d),
        r"ops::noise_mix: step must be >= 0, got -1"),
    Bad("noise_mix frame", lambda d, o: ops.noise_mix(0, -1, 0, shape=[8], **d),
        r"ops::noise_mix: frame_index must be >= 0, got -1"),
    Bad("noise_mix dtype", lambda d, o: ops.noise_mix(0, 0, 0, 1.0, r(8), 1.0, dtypes={"x": o}, **d),
        r"ops::noise_mix: x must have out's dtype"),
    Bad("conv2d w", lambda d, o: ops.conv2d(c3, r(4, 3, 3), **d), r"ops::conv2d: w must be \[Cout, Cin, k, k\], got"),
    Bad("conv2d w square", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 5), **d),
        r"ops::conv2d: w must be \[Cout, Cin, k, k\] with Cout = 4, Cin = 3, k = 3, got"),
    Bad("conv2d x", lambda d, o: ops.conv2d(r(2, 6, 6), r(4, 3, 3, 3), **d),
        r"ops::conv2d: x must be \[Cin, H, W\] with Cin = 3"),
    Bad("conv2d NFD_RT_CONV", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), **d),
        r"NFD_RT_CONV must be one of 'auto', 'implicit', 'cudnn', 'im2col', got 'bogus'", cuda_only=True,
        env={"NFD_RT_CONV": "bogus"}),
    Bad("gated_add_layernorm_modulate NFD_RT_FUSED_NORM",
        lambda d, o: ops.gated_add_layernorm_modulate(x48, r(8), x48.copy(), r(8), r(8), **d),
        r"NFD_RT_FUSED_NORM must be one of 'on', 'off', '1', '0', got 'bogus'", cuda_only=True,
        env={"NFD_RT_FUSED_NORM": "bogus"}),
    Bad("rope_qkv_split NFD_RT_ROPE_GROUP", lambda d, o: ops.rope_qkv_split(r(12, 3 * 2 * 32), 0, [8, 12, 12],
                                                                            10000.0, 4, 2, **d),
        r"NFD_RT_ROPE_GROUP must be one of '4', '1', got 'bogus'", cuda_only=True, env={"NFD_RT_ROPE_GROUP": "bogus"}),
    Bad("conv2d stride", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), stride=0, **d),
        r"ops::conv2d: stride must be >= 1 and pad >= 0, got stride 0"),
    Bad("conv2d small image", lambda d, o: ops.conv2d(r(3, 2, 2), r(4, 3, 5, 5), **d),
        r"ops::conv2d: x .* is smaller than the kernel"),
    Bad("conv2d out", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), pad=1, shapes={"out": [4, 5, 6]}, **d),
        r"ops::conv2d: out must be \[Cout, Ho, Wo\] with Cout = 4, Ho = 6, Wo = 6"),
    Bad("conv2d bias", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), r(3), **d), r"ops::conv2d: bias must be \[Cout\]"),
    Bad("conv2d residual", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), None, 1, 1, r(4, 6, 5), **d),
        r"ops::conv2d: residual must have out's shape"),
    Bad("conv2d residual aliasing", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), None, 1, 1, r(4, 6, 6),
                                                            alias={"out": "residual"}, **d),
        r"ops::conv2d: residual and out must not overlap in memory"),
    Bad("conv2d aliasing", lambda d, o: ops.conv2d(c3, r(3, 3, 3, 3), None, 1, 1, alias={"out": "x"}, **d),
        r"ops::conv2d: x and out must not overlap in memory"),
    Bad("conv2d dtype", lambda d, o: ops.conv2d(c3, r(4, 3, 3, 3), r(4), dtypes={"bias": o}, **d),
        r"ops::conv2d: bias must have out's dtype"),
    Bad("groupnorm x", lambda d, o: ops.groupnorm(r(8, 4), r(8), r(8), 4, **d),
        r"ops::groupnorm: x must be \[C, H, W\]"),
    Bad("groupnorm groups", lambda d, o: ops.groupnorm(r(6, 2, 2), r(6), r(6), 4, **d),
        r"ops::groupnorm: groups must be > 0 and divide C = 6, got 4"),
    Bad("groupnorm gamma", lambda d, o: ops.groupnorm(r(8, 2, 2), r(7), r(8), 4, **d),
        r"ops::groupnorm: gamma must be \[C\] with C = 8"),
    Bad("groupnorm beta", lambda d, o: ops.groupnorm(r(8, 2, 2), r(8), r(9), 4, **d),
        r"ops::groupnorm: beta must be \[C\] with C = 8"),
    Bad("groupnorm dtype", lambda d, o: ops.groupnorm(r(8, 2, 2), r(8), r(8), 4, dtypes={"gamma": o}, **d),
        r"ops::groupnorm: gamma must have out's dtype"),
    Bad("upsample_nearest2x x", lambda d, o: ops.upsample_nearest2x(r(3, 4), **d),
        r"ops::upsample_nearest2x: x must be \[C, H, W\]"),
    Bad("upsample_nearest2x out", lambda d, o: ops.upsample_nearest2x(img, shapes={"out": [3, 8, 9]}, **d),
        r"ops::upsample_nearest2x: out must be \[C, 2H, 2W\] with C = 3, 2H = 8, 2W = 10"),
    Bad("upsample2x_conv2d w", lambda d, o: ops.upsample2x_conv2d(img, r(8, 3, 1, 1), **d),
        r"ops::upsample2x_conv2d: w must be \[Cout, Cin, 3, 3\], got"),
    Bad("upsample2x_conv2d x", lambda d, o: ops.upsample2x_conv2d(img, r(8, 4, 3, 3), **d),
        r"ops::upsample2x_conv2d: x must be \[Cin, H, W\] with Cin = 4"),
    Bad("upsample2x_conv2d bias", lambda d, o: ops.upsample2x_conv2d(img, r(8, 3, 3, 3), r(3), **d),
        r"ops::upsample2x_conv2d: bias must be \[Cout\] with Cout = 8"),
    Bad("to_uint8 image", lambda d, o: ops.to_uint8(r(4, 4, 5), **d), r"ops::to_uint8: image must be \[3, H, W\], got"),
    Bad("to_uint8 truncated image", lambda d, o: ops.to_uint8(r(4, 4, 5), pixels="truncated", **d),
        r"ops::to_uint8: image must be \[3, H, W\], got"),
    Bad("to_uint8 out", lambda d, o: ops.to_uint8(img, dtypes={"out": "float32"}, **d),
        r"ops::to_uint8: out must be u8, got f32"),
    Bad("to_uint8 device", lambda d, o: ops.to_uint8(img, devices={"out": "cpu"}, **d),
        r"ops::to_uint8: out must be on image's device \(cuda\)", cuda_only=True),
    Bad("from_uint8 frame", lambda d, o: ops.from_uint8(np.zeros((4, 5, 4), np.uint8), **d),
        r"ops::from_uint8: frame must be \[H, W, 3\], got"),
    Bad("from_uint8 frame dtype",
        lambda d, o: ops.from_uint8(np.zeros((4, 5, 3), np.uint8), dtypes={"frame": "float32"}, **d),
        r"ops::from_uint8: frame must be u8, got f32"),
    Bad("from_uint8 image dtype",
        lambda d, o: ops.from_uint8(np.zeros((4, 5, 3), np.uint8), dtypes={"image": "uint8"}, **d),
        r"ops::from_uint8: image must be f32, bf16 or f16, got u8"),
    Bad("softcap out", lambda d, o: ops.softcap(r(4, 5), 3.0, shapes={"out": [4, 6]}, **d),
        r"ops::softcap: out must have x's shape"),
    Bad("softcap cap", lambda d, o: ops.softcap(r(4, 5), 0.0, **d), r"ops::softcap: cap must be > 0"),
    Bad("pixel_shuffle channels", lambda d, o: ops.pixel_shuffle(r(6, 4, 4), 2, shapes={"out": [1, 8, 8]}, **d),
        r"ops::pixel_shuffle: x's channels must be a multiple of r\^2 = 4"),
    Bad("pixel_shuffle inverse size", lambda d, o: ops.pixel_shuffle(r(3, 5, 4), 2, inverse=True,
                                                                      shapes={"out": [12, 2, 2]}, **d),
        r"ops::pixel_shuffle: x's height and width must be multiples of r = 2"),
    Bad("pixel_shuffle out", lambda d, o: ops.pixel_shuffle(r(12, 4, 4), 2, shapes={"out": [3, 8, 9]}, **d),
        r"ops::pixel_shuffle: out must be \[C, H r, W r\] with C = 3, H r = 8"),
    Bad("resize_bilinear out", lambda d, o: ops.resize_bilinear(r(3, 4, 5), 6, 7, shapes={"out": [2, 6, 7]}, **d),
        r"ops::resize_bilinear: out must be \[C, Ho, Wo\] with C = 3"),
    Bad("resize_bilinear empty", lambda d, o: ops.resize_bilinear(r(3, 4, 5), 0, 7, **d),
        r"ops::resize_bilinear: x and out need at least one row and column"),
    Bad("attention GQA heads", lambda d, o: ops.attention(r(3, 4, 8), kc, kc, [0], **d),
        r"ops::attention: k_cache's heads \(Hkv = 2\) must divide q's H = 3 \(GQA\)"),
    Bad("rope_qkv_split time_pairs without a table",
        lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2, time_pairs=4, **d),
        r"ops::rope_qkv_split: time_pairs needs a table"),
    Bad("rope_qkv_split time_pairs", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [16, 0, 0], 1e4, 1, 2,
                                                                      table=r(12, 4, 2), time_pairs=3, **d),
        r"ops::rope_qkv_split: time_pairs must be 0 or head_dim / 2 - P = 4, got 3"),
    Bad("rope_qkv_split v0", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2, v0=r(12, 95), **d),
        r"ops::rope_qkv_split: v0 must have qkv's shape"),
    Bad("rope_qkv_split qk_norm_eps", lambda d, o: ops.rope_qkv_split(r(12, 96), 0, [8, 4, 4], 1e4, 4, 2,
                                                                       qk_norm_eps=-1.0, **d),
        r"ops::rope_qkv_split: qk_norm_eps must be >= 0"),
    Bad("add_silu without b out", lambda d, o: ops.add_silu(r(2, 3), shapes={"out": [6]}, **d),
        r"ops::add_silu: out must have a's shape"),
    Bad("copy shape", lambda d, o: ops.copy(r(6), shapes={"dst": [7]}, **d), r"ops::copy: dst must have src's shape"),
    Bad("copy to uint8", lambda d, o: ops.copy(r(6), dtypes={"dst": "uint8"}, **d),
        r"ops::copy: converts only among f32, bf16 and f16"),
]


def same_words(message: str) -> str:
    """The message with dtypes and devices made generic: a contract reads alike on every backend."""
    return re.sub(r"\b(f32|bf16|f16)\b", "DT", re.sub(r"\b(cpu|cuda)\b", "DEV", message))


def contract_message(row: Bad, device: str, dtype: str) -> str:
    other = "bfloat16" if dtype == "float32" else "float32"
    with pytest.raises(row.error, match=row.match) as err:
        row.call(dict(device=device, dtype=dtype), other)
    return str(err.value)


@pytest.mark.parametrize("row,device,dtype", backend_params(
    CONTRACTS, lambda row, device, dtype: device == "cuda" or not row.cuda_only))
def test_contract(row: Bad, device, dtype, clean_env):
    for name, value in row.env.items():
        clean_env.setenv(name, value)
    message = contract_message(row, device, dtype)
    if device != "cpu" and not row.cuda_only:  # the same words as the CPU backend's
        assert same_words(message) == same_words(contract_message(row, "cpu", "float32"))


# The CPU backend's own limit: it computes in fp32, and in bf16 where the CPU has AVX512-BF16 or AMX (an
# `unsupported` error, RuntimeError, otherwise); float16 never.
CPU_LIMIT_CALLS = [
    lambda d: ops.linear(x48, w58, **d),
    lambda d: ops.attention(q, kc, kc, [0], **d),
    lambda d: ops.layernorm_modulate(x48, r(8), r(8), **d),
    lambda d: ops.conv2d(c3, r(4, 3, 3, 3), **d),
    lambda d: ops.groupnorm(r(8, 2, 2), r(8), r(8), 4, **d),
    lambda d: ops.noise_mix(0, 0, 0, shape=[8], **d),
]
CPU_LIMIT_IDS = ["linear", "attention", "layernorm_modulate", "conv2d", "groupnorm", "noise_mix"]


@pytest.mark.parametrize("call", CPU_LIMIT_CALLS, ids=CPU_LIMIT_IDS)
def test_cpu_computes_in_fp32_or_bf16(call):
    with pytest.raises(RuntimeError, match=r"the CPU backend (computes in fp32 or bf16|converts only between f32 and bf16)"):
        call(dict(device="cpu", dtype="float16"))
    if CPU_BF16["ok"]:
        call(dict(device="cpu", dtype="bfloat16"))  # runs
    else:
        with pytest.raises(RuntimeError, match=r"in bf16 only on CPUs with AVX512-BF16 or AMX: .*got bf16"):
            call(dict(device="cpu", dtype="bfloat16"))


def test_cpu_refuses_bf16_without_avx512_bf16():
    """oneDNN capped below AVX512-BF16 (ONEDNN_MAX_CPU_ISA, as on a CPU without it): every bf16 op and a bf16
    session are refused, naming what is missing; float32 still runs; dtype="auto" resolves to float32."""
    if not CPU_BF16["onednn"]:
        pytest.skip("built without oneDNN: bf16 is refused everywhere (test_cpu_computes_in_fp32_or_bf16)")
    import subprocess
    import sys
    code = """
import numpy as np, nfd_rt
from nfd_rt import _core
assert not _core.cpu_bf16()["ok"], _core.cpu_bf16()
try:
    _core.ops.linear(np.ones((2, 8), np.float32), np.ones((3, 8), np.float32), dtype="bfloat16")
    raise SystemExit("bf16 linear ran")
except RuntimeError as e:
    assert "in bf16 only on CPUs with AVX512-BF16 or AMX: this CPU has neither" in str(e), e
_core.ops.linear(np.ones((2, 8), np.float32), np.ones((3, 8), np.float32), dtype="float32")
assert nfd_rt.resolve_dtype("cpu", "auto") == "float32"
print("refused")
"""
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "refused" in r.stdout, r.stdout + r.stderr


# The linears of the real models' frames (rows M, in K, out N): nfd-130m, Oasis-500M, Waypoint-1.5-360P. In bf16 the
# CPU cuts N into fixed blocks, each a oneDNN product into a dense block of scratch (oneDNN 3.2 offers only its
# reference kernel, plain loops, for the gated residual's fused post-ops on a block of a wider output: that made a
# Waypoint-360P frame take 245 s instead of 6 s). NFD_RT_CPU_EPILOGUE=ours runs the fallback (bare product and
# our epilogue) that such a case still takes.
BF16_MODEL_LINEARS = [(336, 768, 768), (336, 3072, 768), (144, 1024, 1024), (144, 4096, 1024), (128, 2048, 2048),
                      (128, 8192, 2048), (128, 2048, 8192)]


@pytest.mark.parametrize("M,K,N", BF16_MODEL_LINEARS, ids=[f"{m}x{k}x{n}" for m, k, n in BF16_MODEL_LINEARS])
@pytest.mark.parametrize("epilogue", ["gated_residual", "silu", "gelu_tanh", "none"])
@pytest.mark.parametrize("impl", ["auto", "ours"])
def test_cpu_bf16_linear_of_model_shapes_never_runs_onednn_reference_kernels(M, K, N, epilogue, impl, monkeypatch):
    if not CPU_BF16["ok"]:
        pytest.skip("this CPU computes no bf16 (no AVX512-BF16 / AMX, or no oneDNN)")
    monkeypatch.setenv("NFD_RT_CPU_EPILOGUE", impl)
    _core.clear_kernels_used()
    got = linear_call(M, K, N, epilogue, True)(dict(device="cpu", dtype="bfloat16"))
    used = _core.kernels_used()
    assert not [k for k in used if "reference kernel" in k], used
    fallback = [v for k, v in used.items() if k.startswith("linear cpu bf16") and "bare product" in v]
    # The fallback runs exactly where asked for (an epilogue beyond the bias): oneDNN fuses every epilogue here.
    assert bool(fallback) == (impl == "ours" and epilogue != "none"), used
    want = linear_ref(M, K, N, epilogue, True)
    err = float(torch.linalg.norm(T(got) - want) / torch.linalg.norm(want))
    assert err < 1e-2, f"relative L2 error {err:.2e} (bf16 output)"


# fp32 linear on the CPU: per column block oneDNN (large blocks) or OpenBLAS (the rest), fixed by the block's shape;
# NFD_RT_CPU_GEMM=openblas|onednn takes one engine for every block. Shapes: tiny's (16 rows: OpenBLAS under auto),
# a 77-row one and nfd-130m / Oasis-500M ones (oneDNN under auto), a matrix-vector product.
FP32_ENGINE_LINEARS = [(16, 128, 384), (77, 1024, 1024), (336, 1024, 4096), (144, 4096, 1024), (1, 1024, 6144)]


@pytest.mark.parametrize("M,K,N", FP32_ENGINE_LINEARS, ids=[f"{m}x{k}x{n}" for m, k, n in FP32_ENGINE_LINEARS])
@pytest.mark.parametrize("epilogue", ["none", "gelu_tanh", "gated_residual"])
@pytest.mark.parametrize("engine", ["auto", "openblas", "onednn"])
def test_cpu_fp32_linear_under_each_gemm_engine(M, K, N, epilogue, engine, monkeypatch):
    if engine == "onednn" and not CPU_BF16["onednn"]:
        pytest.skip("this build has no oneDNN")
    monkeypatch.setenv("NFD_RT_CPU_GEMM", engine)
    got = linear_call(M, K, N, epilogue, True)(dict(device="cpu", dtype="float32"))
    compare(got, linear_ref(M, K, N, epilogue, True), "close", "float32", K >= 1024,
            f"linear {M}x{K}x{N} {epilogue} ({engine})")


def test_cpu_fp32_linear_engine_is_fixed_by_the_shape(monkeypatch):
    """auto runs oneDNN on a large block and OpenBLAS on a small one (their bits differ, so the engine that ran
    shows), the same at every thread count; a value that is no engine is refused by name."""
    if not CPU_BF16["onednn"]:
        pytest.skip("this build has no oneDNN")

    def run(engine, M, K, N, threads=2):
        monkeypatch.setenv("NFD_RT_CPU_GEMM", engine)
        i = linear_inputs(M, K, N)
        return np.asarray(ops.linear(i["x"], i["w"], i["b"], device="cpu", dtype="float32", threads=threads))

    large, small = (336, 1024, 4096), (16, 128, 384)
    assert not np.array_equal(run("openblas", *large), run("onednn", *large))  # the switch changes the engine
    for threads in (1, 2, 3):
        assert np.array_equal(run("auto", *large, threads=threads), run("onednn", *large))
        assert np.array_equal(run("auto", *small, threads=threads), run("openblas", *small))
    monkeypatch.setenv("NFD_RT_CPU_GEMM", "bogus")
    with pytest.raises(ValueError, match="NFD_RT_CPU_GEMM must be one of 'auto', 'openblas', 'onednn', got 'bogus'"):
        ops.linear(x48, w58, device="cpu", dtype="float32")


def test_every_op_has_a_binding_and_rows():
    """csrc/ops/ops.def is the one list of ops: each has a binding in _core.ops and rows in this table (results
    and contract), so an op cannot be added without its test."""
    names = _core.op_names()
    assert len(names) == len(set(names)) and "linear" in names and "attention" in names
    case_ops = {c.id.split(" ")[0] for c in CASES}
    bad_ops = {b.id.split(" ")[0] for b in CONTRACTS}
    for name in names:
        assert hasattr(ops, name), f"op {name} has no binding in csrc/python/ops_bindings.cc"
        assert name in case_ops, f"op {name} has no row in CASES"
        if name not in ("copy", "from_uint8", "noise_mix", "add_silu"):
            assert name in bad_ops, f"op {name} has no row in CONTRACTS"


# keys = same_token on the CPU goes slot by slot over the heads of a token that one thread's chunk holds; a chunk may
# start or end inside a token, and under GQA inside a K/V head's group. Every thread count gives the same bits, and
# each matches the float64 reference (gqa_ref).
SAME_TOKEN_CHUNKS = [(6, 3, 7, 40, 6, [5, 0, 2, 3, 1]), (8, 2, 33, 24, 4, [3, 1]), (16, 16, 144, 64, 33, list(range(32)))]


@pytest.mark.parametrize("H,Hkv,N,hd,S,visible", SAME_TOKEN_CHUNKS,
                         ids=[f"H{h}-Hkv{k}-N{n}-hd{d}" for h, k, n, d, _, _ in SAME_TOKEN_CHUNKS])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_same_token_attention_is_the_same_at_any_thread_count(H, Hkv, N, hd, S, visible, dtype):
    if dtype == "bfloat16" and not CPU_BF16["ok"]:
        pytest.skip("this CPU computes no bf16 (no AVX512-BF16 / AMX, or no oneDNN)")
    outs = [np.asarray(ops.attention(*gqa_inputs(H, Hkv, N, hd, S), visible, keys="same_token", device="cpu",
                                     dtype=dtype, threads=t)) for t in (1, 2, 3, 4)]
    for t, o in zip((2, 3, 4), outs[1:]):
        assert np.array_equal(outs[0], o), f"{t} threads differ from 1"
    want = gqa_ref(H, Hkv, N, hd, S, tuple(visible), same_token=True).numpy()
    assert np.abs(outs[0] - want).max() < (1e-5 if dtype == "float32" else 3e-2)
