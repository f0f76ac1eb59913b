"""PyTorch reference of the Oasis family (Oasis-500M of etched-ai/open-oasis): the parity oracle of the runtime's
Oasis plug-in.

Written from the published architecture, in this project's own structure and names (docs/oasis.md lists every
fact, the upstream file it was read from, and every place where this code and upstream differ). The state_dict
names of `OasisModel` are the tensor names of an Oasis `.nfd` file; `nfd_rt.convert.oasis` maps upstream
checkpoints onto them.

The model, per frame of N = (h / p)(w / p) tokens of width D:
- conditioning: c = SiLU(time_embed(features(level)) + action_embed(action)), one vector per frame;
- each block = a spatial sub-block (attention over the N tokens of the frame, axial 2-D "pixel" RoPE) then a
  temporal sub-block (attention of each token over the same token of the frames it sees, causal, 1-D RoPE on
  the frame index), each with its own adaLN-Zero (six vectors from Linear(c)) and MLP;
- final layer: adaLN (shift, scale) + Linear -> the v-prediction of every patch.
Sampling is DDIM (eta 0) with v-prediction; context frames enter clean, labelled with `context_level`.

Four samplers behind one session API (`OasisReferenceSession(sampler=...)`), all with the same noise:
- "recompute": upstream's generate.py loop: every DDIM step runs the DiT over the last `max_frames` frames
  (context frames clean, labelled `context_level`, RoPE positions 0.. within that window, causal).
- "cached" (default; the runtime's fast path): each finished frame's temporal K/V of every layer are written
  once by a cache-write pass of its clean latent at `context_level`; a new frame's DDIM steps run over that frame
  alone and attend to the cached K/V of the `max_frames - 1` frames before it. Passes a frame: steps + 1.
  Equal to "recompute" while the window has not rolled (frame index < max_frames); after that a cached frame
  keeps the K/V it got when written, with the frames it saw then, where upstream recomputes it without the
  frames that left the window (docs/oasis.md, "Cached vs recompute").
- "cached-rebuild": "cached", except that once the window has rolled (frame index >= max_frames) the K/V of the
  context frames are rebuilt before each new frame by one pass over the window's clean context latents (causal
  among themselves, as upstream sees them), then the new frame's DDIM steps run alone. Equal to "recompute" at
  every frame; costs steps single-frame passes + one (max_frames - 1)-frame pass a frame.
- "recompute-full": every step runs the DiT over the whole history, each frame seeing the `max_frames - 1`
  frames before it: the "cached" semantics written without a cache (equal to "cached" at every frame).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks, rng
from ..configs import OasisConfig
from .model import EmbedMLP, modulate

# ---------------------------------------------------------------------------------------------------------------
# Positions (RoPE) and timestep features. Angles in float64, rounded to float32 once.


def pixel_rope_angles(rows: int, cols: int, dim: int, max_freq: float) -> torch.Tensor:
    """Axial "pixel" RoPE angles of a rows x cols token grid (tokens row-major): float64 [rows * cols, dim].

    Upstream's RotaryEmbedding(dim, freqs_for="pixel", max_freq).get_axial_freqs(rows, cols): dim / 2
    frequencies f_j = pi * linspace(1, max_freq / 2, dim / 2)[j]; positions linspace(-1, 1, n) along each axis.
    Pair j < dim / 2 of a head rotates by row_pos * f_j, pair dim / 2 + j by col_pos * f_j; 2 * dim features.
    """
    n = dim // 2
    freqs = torch.linspace(1.0, max_freq / 2.0, n, dtype=torch.float64) * math.pi
    row_pos = torch.linspace(-1.0, 1.0, rows, dtype=torch.float64)
    col_pos = torch.linspace(-1.0, 1.0, cols, dtype=torch.float64)
    by_row = (row_pos[:, None] * freqs)[:, None, :].expand(rows, cols, n)
    by_col = (col_pos[:, None] * freqs)[None, :, :].expand(rows, cols, n)
    return torch.cat([by_row, by_col], dim=-1).reshape(rows * cols, 2 * n)


def temporal_rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """1-D "lang" RoPE angles: float64 [T, head_dim / 2], pair j at position p rotates by p * theta^(-2j / head_dim)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return positions.to(torch.float64)[:, None] * freqs[None, :]


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first P adjacent pairs (x[2i], x[2i+1]) of the last axis, P = cos.shape[-1]; the rest passes.

    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin): upstream's `t * cos + rotate_half(t) * sin` on interleaved
    frequencies. cos / sin broadcast against x[..., :P].
    """
    p = cos.shape[-1]
    head, tail = x[..., : 2 * p], x[..., 2 * p:]
    x0, x1 = head[..., 0::2], head[..., 1::2]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([out, tail], dim=-1) if tail.shape[-1] else out


def level_features(levels: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer noise levels: [cos(l f_i), sin(l f_i)], f_i = 10000^(-i / (dim / 2)).

    As upstream's TimestepEmbedder (the level itself, not a fraction of 1000 as in the NFD model). float32 [..., dim].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=levels.device) / half)
    args = levels.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(torch.float32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [masked]) v over [..., L, d] tensors; `visible` [Lq, Lk] bool or None (all)."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[..., C, H, W] -> [..., (H / p)(W / p), C p p]: tokens row-major, patch vector ordered (c, py, px)."""
    *lead, C, H, W = x.shape
    x = x.reshape(*lead, C, H // p, p, W // p, p)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)
    return x.reshape(*lead, (H // p) * (W // p), C * p * p)


def unpatchify(x: torch.Tensor, p: int, channels: int, rows: int, cols: int) -> torch.Tensor:
    """[..., rows * cols, C p p] (patch vector (c, py, px)) -> [..., C, rows p, cols p]."""
    *lead, _, _ = x.shape
    x = x.reshape(*lead, rows, cols, channels, p, p)
    n = len(lead)
    x = x.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4)
    return x.reshape(*lead, channels, rows * p, cols * p)


# ---------------------------------------------------------------------------------------------------------------
# DiT

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class AxialSubBlock(nn.Module):
    """One adaLN-Zero sub-block (spatial or temporal; the attention's axis is the caller's `attend`).

        shift1, scale1, gate1, shift2, scale2, gate2 = chunk6(adaln(c))
        q, k, v = split3(qkv(LN(x) (1 + scale1) + shift1));  q, k = RoPE(q), RoPE(k)
        x += gate1 * proj(attend(q, k, v))
        x += gate2 * fc2(GELU_tanh(fc1(LN(x) (1 + scale2) + shift2)))
    LN: no affine, eps norm_eps. qkv has no bias.
    """

    def __init__(self, cfg: OasisConfig):
        super().__init__()
        D = cfg.hidden_size
        self.heads, self.head_dim, self.eps = cfg.num_heads, cfg.head_dim, cfg.norm_eps
        self.adaln = nn.Linear(D, 6 * D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D)
        self.fc1 = nn.Linear(D, cfg.mlp_ratio * D)
        self.fc2 = nn.Linear(cfg.mlp_ratio * D, D)

    def forward(self, x, c, cos, sin, attend: AttendFn):
        """x [B, T, N, D]; c [B, T, D]; cos / sin broadcast to [B, T, N, H, P];
        attend(q, k, v) with q, k, v [B, T, N, H, hd] (RoPE applied) -> [B, T, N, H, hd]. Returns x."""
        B, T, N, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)[:, :, None, :].chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(x, shift1, scale1, self.eps)).view(B, T, N, 3, self.heads, self.head_dim).unbind(3)
        a = attend(rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin), v).flatten(-2)
        x = x + gate1 * self.proj(a)
        h = self.fc2(F.gelu(self.fc1(modulate(x, shift2, scale2, self.eps)), approximate="tanh"))
        return x + gate2 * h


class OasisBlock(nn.Module):
    def __init__(self, cfg: OasisConfig):
        super().__init__()
        self.spatial = AxialSubBlock(cfg)
        self.temporal = AxialSubBlock(cfg)


class OasisFinalLayer(nn.Module):
    """shift, scale = chunk2(adaln(c)); out = linear(LN(x) (1 + scale) + shift): C p p values a token, (c, py, px)."""

    def __init__(self, cfg: OasisConfig):
        super().__init__()
        self.adaln = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_dim)
        self.eps = cfg.norm_eps

    def forward(self, x, c):
        shift, scale = self.adaln(c)[:, :, None, :].chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale, self.eps))


def spatial_attention(q, k, v):
    """Full attention among the tokens of each frame: q, k, v [B, T, N, H, hd] -> [B, T, N, H, hd]."""
    out = attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))  # [B, T, H, N, hd]
    return out.transpose(2, 3)


def temporal_attention(q, k, v, visible: torch.Tensor):
    """Attention of each token over the same token of the frames `visible` [T, T] lets it see.
    q, k, v [B, T, N, H, hd] -> [B, T, N, H, hd]."""
    out = attention(*(t.permute(0, 2, 3, 1, 4) for t in (q, k, v)), visible.to(q.device))  # [B, N, H, T, hd]
    return out.permute(0, 3, 1, 2, 4)


class OasisDiT(nn.Module):
    def __init__(self, cfg: OasisConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_embed = nn.Linear(cfg.patch_dim, D)  # upstream: Conv2d(C, D, p, stride p), weight flattened
        self.time_embed = EmbedMLP(cfg.time_embed_dim, D)
        self.action_embed = nn.Linear(cfg.action_dim, D)
        self.blocks = nn.ModuleList(OasisBlock(cfg) for _ in range(cfg.depth))
        self.final = OasisFinalLayer(cfg)

    def conditioning(self, levels: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """c = SiLU(time_embed(features(level)) + action_embed(action)) per frame: [B, T] x [B, T, A] -> [B, T, D].
        (Upstream adds the two and applies SiLU at the head of every adaLN projection: the same c.)"""
        temb = self.time_embed(level_features(levels, self.cfg.time_embed_dim).to(actions.dtype))
        return F.silu(temb + self.action_embed(actions))

    def spatial_rope(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, 1, N, 1, hd/2]: the same for every frame."""
        rows, cols = self.cfg.grid
        ang = pixel_rope_angles(rows, cols, self.cfg.spatial_rope_dim, self.cfg.spatial_rope_max_freq)
        return tuple(f(ang).to(device, dtype)[None, None, :, None, :] for f in (torch.cos, torch.sin))

    def temporal_rope(self, positions: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, T, 1, 1, hd/2] of the frames' RoPE positions."""
        ang = temporal_rope_angles(positions.cpu(), self.cfg.head_dim, self.cfg.temporal_rope_theta)
        return tuple(f(ang).to(device, dtype)[None, :, None, None, :] for f in (torch.cos, torch.sin))

    def forward_frames(self, latents, levels, actions, positions, temporal_attend, upto: int | None = None):
        """Run the DiT on a clip whose temporal attention is supplied per layer.

        latents [B, T, C, h, w]; levels [B, T] (integer noise levels); actions [B, T, A]; positions [T] (temporal
        RoPE positions); temporal_attend(layer, q, k, v) -> [B, T, N, H, hd].
        Returns the v-prediction [B, T, C, h, w]; with `upto=L`, stops after the temporal attention of layer L - 1
        has been called and returns None (a cache-write pass needs nothing after the last K/V).
        """
        cfg = self.cfg
        dev, dt = latents.device, latents.dtype
        s_cos, s_sin = self.spatial_rope(dev, dt)
        t_cos, t_sin = self.temporal_rope(positions, dev, dt)
        c = self.conditioning(levels, actions)
        x = self.patch_embed(patchify(latents, cfg.patch_size))
        for layer, block in enumerate(self.blocks):
            x = block.spatial(x, c, s_cos, s_sin, spatial_attention)
            if upto is not None and layer == upto - 1:
                block.temporal(x, c, t_cos, t_sin, lambda q, k, v, layer=layer: temporal_attend(layer, q, k, v))
                return None
            x = block.temporal(x, c, t_cos, t_sin, lambda q, k, v, layer=layer: temporal_attend(layer, q, k, v))
        rows, cols = cfg.grid
        return unpatchify(self.final(x, c), cfg.patch_size, cfg.latent_channels, rows, cols)


# ---------------------------------------------------------------------------------------------------------------
# VAE (ViT)


class ViTBlock(nn.Module):
    """Pre-LN ViT block: x += proj(attn(RoPE(q), RoPE(k), v)) over LN1(x); x += fc2(GELU(fc1(LN2(x)))).
    LayerNorms with affine; exact (erf) GELU; qkv with bias; RoPE on the first 2 * rope_dim features a head."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x, cos, sin):
        """x [B, N, E]; cos / sin [N, P]."""
        B, N, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, self.head_dim).unbind(2)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        a = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).flatten(-2)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _vae_rope(cfg: OasisConfig, device, dtype):
    rows, cols = cfg.vae_grid
    ang = pixel_rope_angles(rows, cols, cfg.vae.rope_dim, cfg.vae.rope_max_freq)
    return torch.cos(ang).to(device, dtype), torch.sin(ang).to(device, dtype)


class OasisVAEEncoder(nn.Module):
    """image in [-1, 1] [B, 3, H, W] -> posterior mean [B, C, H / P, W / P] (unscaled; no sampling)."""

    def __init__(self, cfg: OasisConfig):
        super().__init__()
        v = cfg.vae
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.vae_patch_dim, v.encoder_dim)  # upstream: Conv2d(3, E, P, stride P)
        self.blocks = nn.ModuleList(ViTBlock(v.encoder_dim, v.encoder_heads, v.mlp_ratio, v.norm_eps)
                                    for _ in range(v.encoder_depth))
        self.norm = nn.LayerNorm(v.encoder_dim, eps=v.norm_eps)
        self.to_latent = nn.Linear(v.encoder_dim, cfg.latent_channels)  # upstream quant_conv, the mean half

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        cos, sin = _vae_rope(cfg, images.device, images.dtype)
        x = self.patch_embed(patchify(images, cfg.vae.patch_size))
        for block in self.blocks:
            x = block(x, cos, sin)
        z = self.to_latent(self.norm(x))  # [B, N, C], N = rows * cols
        rows, cols = cfg.vae_grid
        return z.transpose(1, 2).reshape(z.shape[0], cfg.latent_channels, rows, cols)


class OasisVAEDecoder(nn.Module):
    """latent (unscaled) [B, C, h, w] -> image in about [-1, 1] [B, 3, h P, w P]."""

    def __init__(self, cfg: OasisConfig):
        super().__init__()
        v = cfg.vae
        self.cfg = cfg
        self.from_latent = nn.Linear(cfg.latent_channels, v.decoder_dim)  # upstream post_quant_conv
        self.blocks = nn.ModuleList(ViTBlock(v.decoder_dim, v.decoder_heads, v.mlp_ratio, v.norm_eps)
                                    for _ in range(v.decoder_depth))
        self.norm = nn.LayerNorm(v.decoder_dim, eps=v.norm_eps)
        self.to_pixels = nn.Linear(v.decoder_dim, cfg.vae_patch_dim)  # upstream predictor; (c, py, px) a token

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        cos, sin = _vae_rope(cfg, z.device, z.dtype)
        x = self.from_latent(z.flatten(2).transpose(1, 2))  # tokens row-major
        for block in self.blocks:
            x = block(x, cos, sin)
        rows, cols = cfg.vae_grid
        return unpatchify(self.to_pixels(self.norm(x)), cfg.vae.patch_size, 3, rows, cols)


class OasisVAE(nn.Module):
    def __init__(self, cfg: OasisConfig):
        super().__init__()
        self.encoder = OasisVAEEncoder(cfg)
        self.decoder = OasisVAEDecoder(cfg)


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W]: (u / 255) * 2 - 1, upstream's order of operations."""
    return (frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0) * 2.0 - 1.0


def images_to_frames(images: torch.Tensor) -> torch.Tensor:
    """float [T, 3, H, W] -> uint8 [T, H, W, 3]: floor(clamp((x + 1) / 2, 0, 1) * 255), as upstream (truncation,
    not rounding: the NFD model rounds)."""
    u = torch.floor(((images.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0)
    return u.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# The whole model


def clip_visible(count: int, window: int | None) -> torch.Tensor:
    """[T, T] bool: frame i of a clip sees frame j iff j <= i and (window is None or i - j <= window)."""
    i = torch.arange(count)[:, None]
    j = torch.arange(count)[None, :]
    ok = j <= i
    return ok if window is None else ok & (i - j <= window)


def ddim_step(x: torch.Tensor, v: torch.Tensor, alpha: float, alpha_next: float) -> torch.Tensor:
    """One DDIM (eta 0) step from a v-prediction, in upstream's form (generate.py):
    x0 = sqrt(a) x - sqrt(1 - a) v;  eps = (x / sqrt(a) - x0) / sqrt(1 / a - 1);
    x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps   (a_next = 1 on the last step: x_next = x0).
    alpha / alpha_next are float32 values of alpha_bar; the arithmetic is in x's dtype."""
    a = torch.tensor(alpha, dtype=torch.float32)
    an = torch.tensor(alpha_next, dtype=torch.float32)
    x0 = a.sqrt() * x - (1 - a).sqrt() * v
    eps = ((1 / a).sqrt() * x - x0) / (1 / a - 1).sqrt()
    return an.sqrt() * x0 + eps * (1 - an).sqrt()


class OasisModel(nn.Module):
    """DiT + ViT VAE of the Oasis family. `velocity` runs a whole clip; the samplers are in OasisReferenceSession."""

    def __init__(self, cfg: OasisConfig, init_seed: int | None = 0):
        super().__init__()
        if not isinstance(cfg, OasisConfig):
            raise TypeError(f"OasisModel needs an OasisConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dit = OasisDiT(cfg)
        self.vae = OasisVAE(cfg)
        if init_seed is not None:
            self.init_random(init_seed)

    @torch.no_grad()
    def init_random(self, seed: int) -> None:
        """Deterministic random init (normal / sqrt(fan_in), small biases, LayerNorm affine near identity).
        Not adaLN-Zero: zero gates would make every block an identity and every parity test pass trivially."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))

    def velocity(self, latents, levels, actions, frame_offset: int = 0, window: int | None = None):
        """v-prediction of every frame of a clip: latents [B, T, C, h, w], levels [B, T], actions [B, T, A].

        window=None: frame i sees every frame j <= i of the clip (upstream's DiT forward, causal over the clip);
        window=W: frame i sees frames i - W .. i (the cached semantics over a whole history). Temporal RoPE
        positions are frame_offset + 0..T-1 (attention depends only on position differences).
        """
        T = latents.shape[1]
        visible = clip_visible(T, window)
        positions = torch.arange(frame_offset, frame_offset + T)
        return self.dit.forward_frames(latents, levels, actions, positions,
                                       lambda layer, q, k, v: temporal_attention(q, k, v, visible))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> DiT latents [T, C, h, w] = encoder mean * scaling_factor."""
        return self.vae.encoder(frames_to_images(frames).to(self.dtype)) * self.cfg.vae.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT latents [T, C, h, w] -> uint8 [T, H, W, 3]."""
        return images_to_frames(self.vae.decoder(latents / self.cfg.vae.scaling_factor))

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.patch_embed.weight.dtype


# ---------------------------------------------------------------------------------------------------------------
# Session


class TemporalKVCache:
    """Per layer the temporal K (after RoPE at the absolute frame index) and V of the last `cache_frames` frames:
    a ring, frame f in slot f % cache_frames. Only the temporal attention needs a cache; spatial attention is
    within a frame."""

    def __init__(self, cfg: OasisConfig, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg
        shape = (cfg.depth, cfg.cache_frames, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_frame = [-1] * cfg.cache_frames

    def clear(self) -> None:
        self.slot_frame = [-1] * self.cfg.cache_frames

    def slot_for(self, frame: int) -> int | None:
        return frame % self.cfg.cache_frames if self.cfg.cache_frames else None

    def visible_slots(self, frame: int) -> list[int]:
        """Slots of the frames `frame` sees (frame - window .. frame - 1), oldest first."""
        held = sorted((f, s) for s, f in enumerate(self.slot_frame) if 0 <= f < frame and frame - f <= self.cfg.window)
        return [s for _, s in held]


SAMPLERS = ("cached", "cached-rebuild", "recompute", "recompute-full")


class OasisReferenceSession:
    """Frame-step API over an `OasisModel` (or an Oasis `.nfd` path); the same methods as `ReferenceSession`.

    Noise: the initial latent of frame i is Philox `latent_noise(seed, i, 0, [C, h, w])` clamped to
    [-noise_clamp, noise_clamp]; DDIM (eta 0) draws nothing else and the cache-write pass adds no noise.
    """

    def __init__(self, model_or_path: OasisModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32", sampler: str = "cached"):
        if isinstance(model_or_path, (str, os.PathLike)):
            from ..nfd_file import load

            model = load(model_or_path)
            if not isinstance(model, OasisModel):
                raise ValueError(f"{model_or_path}: not an Oasis model (use ReferenceSession for NFD models)")
        elif isinstance(model_or_path, OasisModel):
            model = model_or_path
        else:
            raise TypeError(f"expected an OasisModel or a path to an Oasis .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        self.device = torch.device(device)
        self.dtype = dtypes[dtype]
        self.model = model.to(self.device, self.dtype).eval()
        self.cfg: OasisConfig = model.cfg
        self.seed = _checks.seed(seed)
        self.sampler = sampler
        self.alphas_cumprod = self.cfg.alphas_cumprod()
        self.cache = TemporalKVCache(self.cfg, self.device, self.dtype) if sampler.startswith("cached") else None
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (latent, action) of every frame (not "cached")
        self.frame_index = 0
        self._closed = False

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def config(self) -> OasisConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then take the given context frames (uint8 [T, H, W, 3], encoded by the ViT encoder)
        or DiT latents [T, C, h, w] as frames 0..T-1, with their actions (zeros when None, as upstream's first
        frame)."""
        self._check_open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        if frames is not None:
            f = _checks.frames(frames, self.cfg)
            z = self.model.encode(torch.from_numpy(f).to(self.device)) if len(f) else None
        elif latents is not None:
            z = torch.from_numpy(_checks.latents(latents, self.cfg)).to(self.device, self.dtype)
        else:
            z = None
        count = 0 if z is None else z.shape[0]
        a = _checks.actions(actions, count, self.cfg)
        if self.cache is not None:
            self.cache.clear()
        self.history = []
        self.frame_index = 0
        for j in range(count):
            self._commit(z[j], torch.from_numpy(a[j]).to(self.device, self.dtype))
            self.frame_index += 1

    @torch.no_grad()
    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame's DiT latent (float32 [C, h, w]) for `action` and append it to the context."""
        self._check_open()
        a = torch.from_numpy(_checks.action(action, self.cfg)).to(self.device, self.dtype)
        z = self._sample(a)
        self._commit(z, a)
        self.frame_index += 1
        return z.float().cpu().numpy()

    @torch.no_grad()
    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        return self.decode(self.step_latent(action))

    @torch.no_grad()
    def decode(self, latent: Any) -> np.ndarray:
        """Decode one DiT latent [C, h, w] to uint8 [H, W, 3] (the ViT decoder, in the session's dtype)."""
        z = torch.from_numpy(_checks.latents(latent, self.cfg)).to(self.device, self.dtype)
        return self.model.decode(z)[0].cpu().numpy()

    def close(self) -> None:
        self._closed = True
        self.cache = None
        self.history = []

    def __enter__(self) -> "OasisReferenceSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    def initial_noise(self, frame: int) -> torch.Tensor:
        cfg = self.cfg
        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        x = torch.from_numpy(rng.latent_noise(self.seed, frame, 0, shape))
        return x.clamp(-cfg.noise_clamp, cfg.noise_clamp).to(self.device, self.dtype)

    def _sample(self, a: torch.Tensor) -> torch.Tensor:
        """DDIM over cfg.timesteps from the clamped Philox noise; the last step goes to alpha_bar = 1."""
        levels = list(self.cfg.timesteps)
        if self.sampler == "cached-rebuild" and self.frame_index >= self.cfg.max_frames:
            self._rebuild_cache()
        x = self.initial_noise(self.frame_index)
        for k, level in enumerate(levels):
            v = self._velocity(x, level, a)
            alpha_next = float(self.alphas_cumprod[levels[k + 1]]) if k + 1 < len(levels) else 1.0
            x = ddim_step(x, v, float(self.alphas_cumprod[level]), alpha_next)
        return x

    def _velocity(self, x: torch.Tensor, level: int, a: torch.Tensor) -> torch.Tensor:
        if self.sampler.startswith("cached"):
            return self._cached_pass(x, level, a, write=False)
        cfg = self.cfg
        if self.sampler == "recompute":  # upstream: the last max_frames frames, positions from 0, causal
            context = self.history[len(self.history) - min(len(self.history), cfg.max_frames - 1):]
            window = None
        else:  # recompute-full: the whole history, each frame seeing max_frames - 1 frames back
            context = self.history
            window = cfg.window
        z = torch.stack([h[0] for h in context] + [x])[None]
        acts = torch.stack([h[1] for h in context] + [a])[None]
        levels = torch.tensor([[cfg.context_level] * len(context) + [level]], device=self.device)
        offset = self.frame_index - len(context) if self.sampler == "recompute-full" else 0
        return self.model.velocity(z, levels, acts, frame_offset=offset, window=window)[0, -1]

    def _commit(self, z: torch.Tensor, a: torch.Tensor) -> None:
        """A finished frame joins the context: the cache-write pass (cached) and/or the history (the others)."""
        if self.sampler.startswith("cached"):
            self._cached_pass(z, self.cfg.context_level, a, write=True)
        if self.sampler != "cached":
            self.history.append((z, a))
            if self.sampler == "cached-rebuild":
                del self.history[: max(0, len(self.history) - self.cfg.window)]

    def _rebuild_cache(self) -> None:
        """Recompute the temporal K/V of the window's context frames (frame_index - window .. frame_index - 1) as
        upstream sees them while sampling frame `frame_index`: one pass over their clean latents at
        `context_level`, causal among themselves, RoPE at their absolute frame indices."""
        cfg, cache = self.cfg, self.cache
        context = self.history[-cfg.window:]
        first = self.frame_index - len(context)
        z = torch.stack([h[0] for h in context])[None]
        acts = torch.stack([h[1] for h in context])[None]
        levels = torch.full((1, len(context)), cfg.context_level, device=self.device)
        visible = clip_visible(len(context), None)

        def attend(layer, q, k, v):  # [1, W, N, H, hd]
            for t in range(len(context)):
                slot = cache.slot_for(first + t)
                cache.k[layer, slot] = k[0, t]
                cache.v[layer, slot] = v[0, t]
            return temporal_attention(q, k, v, visible)

        self.model.dit.forward_frames(z, levels, acts, torch.arange(first, self.frame_index), attend, upto=cfg.depth)
        for t in range(len(context)):
            cache.slot_frame[cache.slot_for(first + t)] = first + t

    def _cached_pass(self, x: torch.Tensor, level: int, a: torch.Tensor, write: bool) -> torch.Tensor | None:
        """One DiT pass of the current frame alone; temporal attention over the cached K/V of the frames it sees
        plus its own. With `write`, store its temporal K/V of every layer (the cache-write pass, which needs no
        output: it stops after the last layer's temporal K/V)."""
        cfg, cache, i = self.cfg, self.cache, self.frame_index
        slots = cache.visible_slots(i)
        new_k, new_v = [], []

        def attend(layer, q, k, v):  # [1, 1, N, H, hd]
            keys = torch.cat([cache.k[layer, slots], k[0]], dim=0)  # [F + 1, N, H, hd]
            vals = torch.cat([cache.v[layer, slots], v[0]], dim=0)
            out = attention(q[0].permute(1, 2, 0, 3), keys.permute(1, 2, 0, 3), vals.permute(1, 2, 0, 3))
            new_k.append(k[0, 0])
            new_v.append(v[0, 0])
            return out.permute(2, 0, 1, 3)[None]  # [N, H, 1, hd] -> [1, 1, N, H, hd]

        levels = torch.tensor([[level]], device=self.device)
        out = self.model.dit.forward_frames(x[None, None], levels, a[None, None], torch.tensor([i]), attend,
                                            upto=cfg.depth if write else None)
        if write:
            slot = cache.slot_for(i)
            if slot is not None:
                cache.k[:, slot] = torch.stack(new_k)
                cache.v[:, slot] = torch.stack(new_v)
                cache.slot_frame[slot] = i
            return None
        return out[0, 0]
