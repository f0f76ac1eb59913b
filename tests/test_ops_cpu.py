"""Every op of the CPU backend against PyTorch fp32 (python/nfd_rt/reference/model.py is the math)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfd_rt import rng
from nfd_rt.reference.model import apply_rope, images_to_frames, frames_to_images

ops = pytest.importorskip("nfd_rt._core").ops

TOL = 1e-5  # max|a - b| / max|b|


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def randn(*shape, seed=0):
    return np.random.default_rng(seed + len(shape) * 7 + sum(shape)).standard_normal(shape).astype(np.float32)


T = torch.from_numpy


@pytest.mark.parametrize("M,K,N", [(1, 8, 128), (16, 128, 384), (37, 64, 50)])
def test_linear(M, K, N):
    x, w, b = randn(M, K), randn(N, K, seed=1), randn(N, seed=2)
    ref = F.linear(T(x), T(w), T(b)).numpy()
    assert rel_err(ops.linear(x, w, b), ref) <= TOL
    assert rel_err(ops.linear(x, w), F.linear(T(x), T(w)).numpy()) <= TOL
    gelu = F.gelu(T(ref), approximate="tanh").numpy()
    assert rel_err(ops.linear(x, w, b, epilogue="gelu_tanh"), gelu) <= TOL
    y0, gate = randn(M, N, seed=3), randn(N, seed=4)
    gated = (T(y0) + T(gate) * T(ref)).numpy()
    assert rel_err(ops.linear(x, w, b, epilogue="gated_residual", gate=gate, y=y0), gated) <= TOL


def test_linear_errors():
    with pytest.raises(ValueError, match=r"x must be \[M, K\] with K = 9"):
        ops.linear(randn(4, 8), randn(5, 9))
    with pytest.raises(ValueError, match="gate"):
        ops.linear(randn(4, 8), randn(5, 8), epilogue="gated_residual", y=randn(4, 5))
    with pytest.raises(RuntimeError, match="fp32"):
        ops.linear(randn(4, 8), randn(5, 8), dtype="bfloat16")


def test_layernorm_modulate():
    x, shift, scale = randn(16, 128) * 3 + 1, randn(128, seed=1), randn(128, seed=2)
    ref = (F.layer_norm(T(x), (128,), eps=1e-6) * (1 + T(scale)) + T(shift)).numpy()
    assert rel_err(ops.layernorm_modulate(x, shift, scale, 1e-6), ref) <= TOL


def test_add_silu():
    a, b = randn(300), randn(300, seed=1)
    assert rel_err(ops.add_silu(a, b), F.silu(T(a) + T(b)).numpy()) <= TOL


@pytest.mark.parametrize("frame_index", [0, 5, 1000])
def test_rope_qkv_split(frame_index):
    from nfd_rt import configs
    from nfd_rt.reference.model import rope_angles

    cfg = configs.get("tiny")
    N, H, hd = cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim
    qkv = randn(N, 3 * H * hd)
    q, k, v = ops.rope_qkv_split(qkv, frame_index, list(cfg.rope_dims), cfg.rope_theta, cfg.grid[1], H)
    cos, sin = rope_angles(cfg, torch.tensor([frame_index]))
    rq, rk, rv = T(qkv).view(1, N, 3, H, hd).unbind(2)  # [T=1, N, H, hd]
    ref_q = apply_rope(rq, cos, sin)[0].transpose(0, 1).numpy()  # [H, N, hd]
    ref_k = apply_rope(rk, cos, sin)[0].numpy()  # the cache is token-major: [N, H, hd]
    assert rel_err(q, ref_q) <= TOL
    assert rel_err(k, ref_k) <= TOL
    assert np.array_equal(v, rv[0].numpy())


@pytest.mark.parametrize("slots", [[0], [2, 0, 3], [4, 1, 2, 3, 0], [0, 1, 2, 4, 3]])
@pytest.mark.parametrize("H,N,hd,spread", [
    (4, 16, 32, 2.0),   # tiny: one block of 16 queries, head_dim two vectors of 16
    (2, 5, 8, 2.0),     # a partial query block; head_dim below one vector; keys not a multiple of 4
    (3, 37, 40, 2.0),   # three query blocks (the last partial); head_dim 16 + 16 + a tail of 8
    (1, 18, 128, 2.0),  # head_dim 128 (nfd-310m)
    (2, 16, 64, 30.0),  # scores spread over thousands: softmax nearly one-hot, exp far below its clamp
    (2, 70, 48, 2.0),   # more than 64 tokens: the OpenBLAS path
    (1, 65, 64, 30.0),
])
def test_attention(slots, H, N, hd, spread):
    S = 5  # token-major caches [slots, N, H, hd]
    q, kc, vc = randn(H, N, hd) * spread, randn(S, N, H, hd, seed=1) * 2, randn(S, N, H, hd, seed=2)
    out = ops.attention(q, kc, vc, slots)
    keys = T(kc)[slots].reshape(len(slots) * N, H, hd).transpose(0, 1)
    vals = T(vc)[slots].reshape(len(slots) * N, H, hd).transpose(0, 1)
    ref = F.scaled_dot_product_attention(T(q), keys, vals).transpose(0, 1).reshape(N, H * hd).numpy()
    assert rel_err(out, ref) <= TOL


def test_attention_rejects_bad_slot():
    with pytest.raises(ValueError, match="outside the cache"):
        ops.attention(randn(2, 4, 8), randn(3, 4, 2, 8), randn(3, 4, 2, 8), [0, 3])


def test_patchify_roundtrip():
    C, h, w, p = 4, 8, 12, 2
    z = randn(C, h, w)
    tok = ops.patchify(z, p)
    ref = T(z).reshape(1, 1, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, C * p * p)
    assert np.array_equal(tok, ref.numpy())
    base = randn(C, h, w, seed=5)
    out = ops.unpatchify_axpy(tok, p, -0.25, base)
    assert rel_err(out, base + np.float32(-0.25) * z) <= TOL


def test_noise_bit_identical():
    for seed, frame, step, count in [(0, 0, 0, 256), (2**64 - 1, 7, 4, 1001), (123456789123, 2**31 - 1, 3, 5)]:
        assert np.array_equal(ops.noise(seed, frame, step, count), rng.normal(seed, frame, step, count))
    x = randn(4, 8, 8)
    mixed = ops.noise_mix(9, 3, 4, 0.98, x, 0.02)
    ref = np.float32(0.98) * x + np.float32(0.02) * rng.latent_noise(9, 3, 4, x.shape)
    assert rel_err(mixed, ref) <= TOL


@pytest.mark.parametrize("cin,cout,k,stride,pad,hw", [
    (4, 64, 3, 1, 1, 8), (32, 32, 3, 2, 1, 16), (32, 64, 1, 1, 0, 8), (3, 8, 3, 1, 1, 11),
    # the decoder's sizes and an odd one:
    (64, 64, 3, 1, 1, 16), (64, 32, 3, 1, 1, 32), (32, 32, 3, 1, 1, 64), (5, 12, 3, 1, 1, 18),
    # direct path for <= 4 output channels (the RGB conv_out): 16-column runs, a tail of columns, 1 to 4 outputs
    (32, 3, 3, 1, 1, 64), (7, 1, 3, 1, 1, 19), (5, 2, 3, 1, 1, 5), (9, 4, 3, 1, 1, 33)])
def test_conv2d(cin, cout, k, stride, pad, hw):
    x, w, b = randn(cin, hw, hw), randn(cout, cin, k, k, seed=1) / math.sqrt(cin * k * k), randn(cout, seed=2)
    ref = F.conv2d(T(x)[None], T(w), T(b), stride=stride, padding=pad)[0].numpy()
    assert rel_err(ops.conv2d(x, w, b, stride=stride, pad=pad), ref) <= TOL
    res = randn(*ref.shape, seed=3)
    assert rel_err(ops.conv2d(x, w, b, stride=stride, pad=pad, residual=res), res + ref) <= TOL
    no_bias = F.conv2d(T(x)[None], T(w), None, stride=stride, padding=pad)[0].numpy()
    assert rel_err(ops.conv2d(x, w, None, stride=stride, pad=pad), no_bias) <= TOL


@pytest.mark.parametrize("cin,cout,h,w", [
    (16, 24, 32, 48),  # Winograd F(2x2, 3x3): even sides, >= 1024 pixels, not square
    (8, 16, 28, 48),   # the shape class of nfd-130m's decoder (224 x 384 frames / 8)
    (8, 16, 33, 32),   # an odd side: im2col instead
    (48, 64, 20, 256),  # bands of 4, 4 and 2 tile rows (scratch is bounded at 4 MiB)
    (64, 3, 130, 256),  # the direct path for <= 4 outputs in bands of 61, 61 and 8 rows
])
def test_conv2d_3x3_rectangular(cin, cout, h, w):
    x, wt, b = randn(cin, h, w), randn(cout, cin, 3, 3, seed=1) / math.sqrt(cin * 9), randn(cout, seed=2)
    ref = F.conv2d(T(x)[None], T(wt), T(b), padding=1)[0].numpy()
    assert rel_err(ops.conv2d(x, wt, b, stride=1, pad=1), ref) <= TOL
    res = randn(*ref.shape, seed=3)
    assert rel_err(ops.conv2d(x, wt, b, stride=1, pad=1, residual=res), res + ref) <= TOL


@pytest.mark.parametrize("silu", [False, True])
def test_groupnorm(silu):
    x, g, b = randn(32, 16, 16) * 2 + 0.5, randn(32, seed=1), randn(32, seed=2)
    ref = F.group_norm(T(x)[None], 8, T(g), T(b), eps=1e-6)
    if silu:
        ref = F.silu(ref)
    assert rel_err(ops.groupnorm(x, g, b, 8, 1e-6, silu), ref[0].numpy()) <= TOL


@pytest.mark.parametrize("cin,cout,h,w", [
    (64, 64, 8, 8), (32, 32, 32, 32), (3, 5, 5, 7),
    (32, 32, 30, 128),  # bands of 12, 12 and 6 input rows (scratch is bounded at 4 MiB)
])
def test_upsample2x_conv2d(cin, cout, h, w):
    x, wt, b = randn(cin, h, w), randn(cout, cin, 3, 3, seed=1) / math.sqrt(cin * 9), randn(cout, seed=2)
    up = F.interpolate(T(x)[None], scale_factor=2, mode="nearest")
    ref = F.conv2d(up, T(wt), T(b), padding=1)[0].numpy()
    assert rel_err(ops.upsample2x_conv2d(x, wt, b), ref) <= TOL
    assert rel_err(ops.upsample2x_conv2d(x, wt), ref - b[:, None, None]) <= TOL


def test_upsample():
    x = randn(3, 5, 7)
    assert np.array_equal(ops.upsample_nearest2x(x), F.interpolate(T(x)[None], scale_factor=2, mode="nearest")[0].numpy())


def test_uint8_conversions():
    img = np.clip(randn(3, 16, 20) * 0.7, -1.2, 1.2).astype(np.float32)
    img[0, 0, :4] = [-1.0, 1.0, 0.0, -1.5]
    assert np.array_equal(ops.to_uint8(img), images_to_frames(T(img)[None])[0].numpy())
    frame = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    assert np.array_equal(ops.from_uint8(frame), frames_to_images(T(frame)[None])[0].numpy())


@pytest.mark.cuda
def test_cuda_matches_cpu_linear():
    x, w, b = randn(16, 128), randn(384, 128, seed=1), randn(384, seed=2)
    assert rel_err(ops.linear(x, w, b, device="cuda"), ops.linear(x, w, b)) <= 1e-5
