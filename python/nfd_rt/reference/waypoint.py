"""PyTorch reference of the Waypoint-1.5 family: the parity oracle of the runtime's "waypoint" architecture.

Written for clarity, not speed (`nfd_rt.baselines.waypoint_static` is the fast PyTorch baseline). Our own code,
from the facts of the public code (docs/waypoint.md lists them and every difference from upstream):

- `WaypointModel` = `dit` (the transformer) + `taehv` (the streaming TAEHV autoencoder); state_dict names are
  the `.nfd` tensor names; `nfd_rt.convert.waypoint` maps the published checkpoint onto them.
- `WaypointSession`: reset / step / step_latent / decode / fork with the per-layer ring cache of the config
  (`WaypointConfig.sees`, `slot_for`) and the decoder's temporal state kept per session.
- `full_rollout`: the same video without a cache, every pass recomputing the whole history under the per-layer
  frame masks: the oracle of the cached session.

One DiT pass of frame f at noise level sigma (tokens x [N, D], c = noise_embed(features(sigma)),
e = control_embed(controls), layer 0's values v0):
    s1, b1, g1 = mod_proj[attn](SiLU(c + attn_mod_bias));  s2, b2, g2 = mod_proj[mlp](SiLU(c + mlp_mod_bias))
    q, k, v = qkv(RMS(x) * (1 + s1) + b1);  v = v + v_mix * (v0 - v) (layers > 0);  q, k = RoPE(RMS(q)), RoPE(RMS(k))
    x += g1 * out(GQA attention over the frames the layer sees, and f itself)
    x += fusion_out(SiLU(fusion_x(RMS(x)) + fusion_c(RMS(e))))                       (control layers only)
    x += g2 * fc2(SiLU(fc1(RMS(x) * (1 + s2) + b2)))
  out: scale, shift = final_mod(SiLU(c));  velocity = unpatchify(final(SiLU(RMS(x) * (1 + scale) + shift)))
RMS has no weight and eps = 2**-23 (float32 epsilon, F.rms_norm's default).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks, rng
from ..configs_waypoint import WaypointConfig

RMS_EPS = float(np.finfo(np.float32).eps)

# ---------------------------------------------------------------------------------------------------------------
# Small pieces


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, eps = float32 epsilon (as F.rms_norm with eps=None)."""
    return F.rms_norm(x, (int(x.shape[-1]),), eps=RMS_EPS)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return rms_norm(x) * (1 + scale) + shift


def noise_features(sigma: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier features of the noise level: sqrt(2) [sin(1000 sigma f_i), cos(1000 sigma f_i)],
    f_i = 10000^(-i / (n/2 - 1)), i < n/2. Computed in float64, returned as float32."""
    half = n // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    phase = (sigma.detach().to("cpu", torch.float64) * 1000.0)[..., None] * freqs
    out = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1) * math.sqrt(2.0)
    return out.to(torch.float32).to(sigma.device)


def rope_frequencies(cfg: WaypointConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial [hd/8], temporal [hd/4]) angular frequencies per rotation pair, float64.

    Spatial: pi * linspace(1, min(rows, cols) * rope_nyquist / 2, ceil(hd/16)), each value for two adjacent
    pairs; temporal: theta^(-2j / (hd/4)), each value for two adjacent pairs."""
    hd = cfg.head_dim
    dxy, dt = hd // 8, hd // 4
    n = (dxy + 1) // 2
    top = min(cfg.grid) * cfg.rope_nyquist / 2
    lin = torch.tensor([1.0 + (top - 1.0) * k / (n - 1) if n > 1 else 1.0 for k in range(n)], dtype=torch.float64)
    fxy = (lin * math.pi).repeat_interleave(2)[:dxy]
    ft = (cfg.rope_theta ** (-torch.arange(0, dt, 2, dtype=torch.float64) / dt)).repeat_interleave(2)
    return fxy, ft


def rope_angles(cfg: WaypointConfig, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [T, N, hd/2] for the tokens of the given absolute frame indices (int64 [T]).

    Pair i of a head is (x[2i], x[2i+1]); pairs [0, hd/8) rotate with the column position, [hd/8, hd/4) with the
    row position, [hd/4, hd/2) with the time position. Positions: col -> (2 col + 1) / cols - 1 and
    row -> (2 row + 1) / rows - 1 (cell centres in [-1, 1]), time -> frame * time_stride. Angles in float64."""
    rows, cols = cfg.grid
    fxy, ft = rope_frequencies(cfg)
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    px, py = (2 * c + 1) / cols - 1, (2 * r + 1) / rows - 1
    space = torch.cat([px[:, None] * fxy, py[:, None] * fxy], dim=-1)  # [N, hd/4]
    t = frames.detach().to("cpu", torch.float64) * cfg.time_stride
    time = t[:, None] * ft  # [T, hd/4]
    T, N = t.shape[0], space.shape[0]
    ang = torch.cat([space[None].expand(T, N, -1), time[:, None].expand(T, N, -1)], dim=-1)
    return torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, N, H, hd] -> the rotated pairs, de-interleaved: out[:hd/2] = x0 cos - x1 sin,
    out[hd/2:] = x1 cos + x0 sin with x0 = x[0::2], x1 = x[1::2]. cos/sin: [T, N, hd/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)


class MLP(nn.Module):
    """fc2(SiLU(fc1(x))), no biases."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


def gqa_attention(q, k, v, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of q [B, Lq, Hq, hd] over k, v [B, Lk, Hkv, hd]; query head h reads kv head
    h // (Hq / Hkv). allowed: bool [Lq, Lk] or None. Returns [B, Lq, Hq, hd]."""
    group = q.shape[2] // k.shape[2]
    kh = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=allowed)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# The transformer


class WaypointBlock(nn.Module):
    def __init__(self, cfg: WaypointConfig, layer: int):
        super().__init__()
        D, hd = cfg.hidden_size, cfg.head_dim
        self.cfg, self.layer = cfg, layer
        self.attn_mod_bias = nn.Parameter(torch.zeros(D))  # added to c before SiLU and the shared mod_proj
        self.mlp_mod_bias = nn.Parameter(torch.zeros(D))
        self.qkv = nn.Linear(D, (cfg.num_heads + 2 * cfg.num_kv_heads) * hd, bias=False)  # rows: q, k, v
        self.out = nn.Linear(D, D, bias=False)
        self.v_mix = nn.Parameter(torch.zeros(1))  # value residual weight (unused by layer 0)
        if cfg.has_control_fusion(layer):
            self.fusion_x = nn.Linear(D, D, bias=False)
            self.fusion_c = nn.Linear(D, D, bias=False)
            self.fusion_out = nn.Linear(D, D, bias=False)
        self.fc1 = nn.Linear(D, cfg.mlp_ratio * D, bias=False)
        self.fc2 = nn.Linear(cfg.mlp_ratio * D, D, bias=False)

    def forward(self, x, attn_mod, mlp_mod, control, cos, sin, v0, attend):
        """x [B, T, N, D]; attn_mod / mlp_mod: (scale, shift, gate) [B, T, 1, D] each; control [B, T, 1, D];
        v0: layer 0's values [B, T, N, Hkv, hd] (None in layer 0); attend(q, k, v) -> [B, T, N, Hq, hd].
        Returns (x, v0)."""
        cfg = self.cfg
        B, T, N, D = x.shape
        Hq, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        scale, shift, gate = attn_mod
        q, k, v = self.qkv(modulate(x, scale, shift)).split([Hq * hd, Hkv * hd, Hkv * hd], dim=-1)
        q, k, v = q.view(B, T, N, Hq, hd), k.view(B, T, N, Hkv, hd), v.view(B, T, N, Hkv, hd)
        if v0 is None:
            v0 = v
        elif cfg.value_residual:
            v = v + self.v_mix * (v0 - v)
        q, k = apply_rope(rms_norm(q), cos, sin), apply_rope(rms_norm(k), cos, sin)
        x = x + gate * self.out(attend(q, k, v).reshape(B, T, N, D))
        if cfg.has_control_fusion(self.layer):
            x = x + self.fusion_out(F.silu(self.fusion_x(rms_norm(x)) + self.fusion_c(rms_norm(control))))
        scale, shift, gate = mlp_mod
        return x + gate * self.fc2(F.silu(self.fc1(modulate(x, scale, shift)))), v0


class WaypointDiT(nn.Module):
    def __init__(self, cfg: WaypointConfig):
        super().__init__()
        D = cfg.hidden_size
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, D, bias=False)
        self.noise_embed = MLP(cfg.noise_features, 4 * D, D)
        self.control_embed = MLP(cfg.control_dim, cfg.mlp_ratio * D, D)
        # The adaLN projections shared by every layer, rows [attn scale, shift, gate, mlp scale, shift, gate];
        # each layer adds its own biases to c before the SiLU.
        self.mod_proj = nn.Linear(D, 6 * D, bias=False)
        self.blocks = nn.ModuleList(WaypointBlock(cfg, i) for i in range(cfg.depth))
        self.final_mod = nn.Linear(D, 2 * D, bias=False)  # rows [scale, shift]
        self.final = nn.Linear(D, cfg.patch_dim)

    # Patches ordered (c, py, px), tokens row-major over the patch grid (a stride-p convolution's layout).
    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, T, C, h, w] -> [B, T, N, C p p]."""
        B, T, C, h, w = z.shape
        p = self.cfg.patch_size
        z = z.reshape(B, T, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(B, T, (h // p) * (w // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, N, C p p] -> [B, T, C, h, w]."""
        cfg = self.cfg
        B, T = x.shape[:2]
        p, C = cfg.patch_size, cfg.latent_channels
        rows, cols = cfg.grid
        x = x.reshape(B, T, rows, cols, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, T, C, rows * p, cols * p)

    def noise_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        """c [..., D] of noise levels sigma [...]."""
        return self.noise_embed(noise_features(sigma, self.cfg.noise_features).to(self.mod_proj.weight.dtype))

    def modulation(self, c: torch.Tensor, layer: int):
        """((attn scale, shift, gate), (mlp scale, shift, gate)) of layer `layer` for c [..., D]."""
        D = self.cfg.hidden_size
        w = self.mod_proj.weight
        blk = self.blocks[layer]
        attn = F.linear(F.silu(c + blk.attn_mod_bias), w[: 3 * D]).chunk(3, dim=-1)
        mlp = F.linear(F.silu(c + blk.mlp_mod_bias), w[3 * D:]).chunk(3, dim=-1)
        return attn, mlp

    def forward_frames(self, latents, sigma, controls, frames, attend_layer):
        """The transformer over T frames whose attention each layer supplies.

        latents [B, T, C, h, w]; sigma [B, T]; controls [B, T, control_dim]; frames int64 [T] (absolute indices);
        attend_layer(layer, q, k, v) -> [B, T, N, Hq, hd]. Returns the velocity [B, T, C, h, w]."""
        cos, sin = (a.to(latents.device, latents.dtype) for a in rope_angles(self.cfg, frames))
        c = self.noise_embedding(sigma)  # [B, T, D]
        e = self.control_embed(controls)[:, :, None, :]
        x = self.patch_embed(self.patchify(latents))
        v0 = None
        for layer, block in enumerate(self.blocks):
            attn, mlp = self.modulation(c[:, :, None, :], layer)
            x, v0 = block(x, attn, mlp, e, cos, sin, v0,
                          lambda q, k, v, layer=layer: attend_layer(layer, q, k, v))
        scale, shift = self.final_mod(F.silu(c))[:, :, None, :].chunk(2, dim=-1)
        return self.unpatchify(self.final(F.silu(modulate(x, scale, shift))))


# ---------------------------------------------------------------------------------------------------------------
# TAEHV: the streaming autoencoder (4 frames per latent, 16x spatial)


class MemBlock(nn.Module):
    """relu(conv3(relu(conv2(relu(conv1(cat[x, past]))))) + x): `past` is this block's input one time step
    earlier (zeros at the first step)."""

    def __init__(self, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * n, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)
        self.conv3 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(torch.cat([x, past], dim=1)))
        return F.relu(self.conv3(F.relu(self.conv2(h))) + x)


def _run_memblock(block: MemBlock, x: torch.Tensor, T: int) -> torch.Tensor:
    """A memory block over a whole sequence: x [B*T, C, H, W] (time inner); past = x shifted one step later."""
    BT, C, H, W = x.shape
    xt = x.view(BT // T, T, C, H, W)
    past = torch.cat([torch.zeros_like(xt[:, :1]), xt[:, :-1]], dim=1).reshape(BT, C, H, W)
    return block(x, past)


class TAEHVEncoder(nn.Module):
    def __init__(self, cfg: WaypointConfig):
        super().__init__()
        t = cfg.taehv
        E, p = t.encoder_channels, t.patch_size
        self.patch, self.strides = p, [2 if d else 1 for d in t.time_downscale]
        self.conv_in = nn.Conv2d(3 * p * p, E, 3, padding=1)
        self.pools = nn.ModuleList(nn.Conv2d(E * s, E, 1, bias=False) for s in self.strides)  # time pooling
        self.downs = nn.ModuleList(nn.Conv2d(E, E, 3, stride=2, padding=1, bias=False) for _ in range(3))
        self.blocks = nn.ModuleList(nn.ModuleList(MemBlock(E) for _ in range(3)) for _ in range(3))
        self.conv_out = nn.Conv2d(E, cfg.latent_channels, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W] in [0, 1] (T a multiple of the time factor) -> latents [B, T/F, C, h, w]."""
        B, T = frames.shape[:2]
        x = F.relu(self.conv_in(F.pixel_unshuffle(frames.flatten(0, 1), self.patch)))
        for s in range(3):
            stride = self.strides[s]
            T //= stride
            x = self.pools[s](x.reshape(B * T, stride * x.shape[1], *x.shape[2:]))  # consecutive frames side by side
            x = self.downs[s](x)
            for block in self.blocks[s]:
                x = _run_memblock(block, x, T)
        x = self.conv_out(x)
        return x.view(B, T, *x.shape[1:])


class TAEHVDecoder(nn.Module):
    """latent -> frames_per_latent frames. Its state between latents: each memory block's last input."""

    def __init__(self, cfg: WaypointConfig):
        super().__init__()
        t = cfg.taehv
        ch, p = t.decoder_channels, t.patch_size
        self.patch, self.strides = p, [2 if u else 1 for u in t.time_upscale]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList(nn.ModuleList(MemBlock(ch[s]) for _ in range(3)) for s in range(3))
        self.grows = nn.ModuleList(nn.Conv2d(ch[s], ch[s] * self.strides[s], 1, bias=False) for s in range(3))
        self.convs = nn.ModuleList(nn.Conv2d(ch[s], ch[s + 1], 3, padding=1, bias=False) for s in range(3))
        self.conv_out = nn.Conv2d(ch[3], 3 * p * p, 3, padding=1)

    @property
    def num_memories(self) -> int:
        return 9

    def _grow(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """[M, C, H, W] -> [M * stride, C, H, W]: output channel chunk j is the j-th frame in time."""
        stride = self.strides[s]
        y = self.grows[s](x)
        return y.reshape(x.shape[0] * stride, x.shape[1], *x.shape[2:])

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_out(F.relu(x))
        return F.pixel_shuffle(x, self.patch).clamp(0, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole sequence from a fresh state: latents [B, T, C, h, w] -> frames [B, T*F, 3, H, W] in [0, 1]
        (no frames trimmed)."""
        B, T = latents.shape[:2]
        x = F.relu(self.conv_in(torch.tanh(latents.flatten(0, 1) / 3) * 3))
        for s in range(3):
            for block in self.blocks[s]:
                x = _run_memblock(block, x, T)
            x = self._grow(s, F.interpolate(x, scale_factor=2, mode="nearest"))
            T *= self.strides[s]
            x = self.convs[s](x)
        x = self._head(x)
        return x.view(B, T, *x.shape[1:])

    def step(self, latent: torch.Tensor, memory: list) -> tuple[torch.Tensor, list]:
        """One latent [B, C, h, w] given the state `memory` (9 tensors, None = fresh) -> (frames [B, F, 3, H, W],
        the new state). Frames run through each block in time order, each reading its predecessor's input."""
        memory = list(memory)
        xs = [F.relu(self.conv_in(torch.tanh(latent / 3) * 3))]
        m = 0
        for s in range(3):
            for block in self.blocks[s]:
                outs = []
                for x in xs:
                    past = torch.zeros_like(x) if memory[m] is None else memory[m]
                    outs.append(block(x, past))
                    memory[m] = x
                xs = outs
                m += 1
            stride = self.strides[s]
            grown = []
            for x in xs:
                y = self._grow(s, F.interpolate(x, scale_factor=2, mode="nearest"))  # [B*stride, ...]
                grown += list(y.view(x.shape[0], stride, *y.shape[1:]).unbind(1))
            xs = [self.convs[s](x) for x in grown]
        return torch.stack([self._head(x) for x in xs], dim=1), memory


class TAEHV(nn.Module):
    def __init__(self, cfg: WaypointConfig):
        super().__init__()
        self.encoder = TAEHVEncoder(cfg)
        self.decoder = TAEHVDecoder(cfg)


# ---------------------------------------------------------------------------------------------------------------
# Pixels


def frames_to_images(cfg: WaypointConfig, frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, Ho, Wo, 3] (output size) -> float [T, 3, H, W] in [0, 1] at the autoencoder's size: u / 255,
    then a bilinear resize (align_corners False, no antialias) when the sizes differ."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    if x.shape[-2:] != (cfg.frame_height, cfg.frame_width):
        x = F.interpolate(x, size=(cfg.frame_height, cfg.frame_width), mode="bilinear", align_corners=False)
    return x


def images_to_frames(cfg: WaypointConfig, images: torch.Tensor) -> torch.Tensor:
    """float [T, 3, H, W] in [0, 1] -> uint8 [T, Ho, Wo, 3]: bilinear resize to the output size when it differs,
    then round(clamp(x, 0, 1) * 255) (round half to even)."""
    x = images.float()
    if x.shape[-2:] != (cfg.output_height, cfg.output_width):
        x = F.interpolate(x, size=(cfg.output_height, cfg.output_width), mode="bilinear", align_corners=False)
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# The model


class WaypointModel(nn.Module):
    """Transformer + TAEHV. `velocity_full` runs frames together under the per-layer frame masks."""

    def __init__(self, cfg: WaypointConfig, init_seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.dit = WaypointDiT(cfg)
        self.taehv = TAEHV(cfg)
        if init_seed is not None:
            self.init_random(init_seed)

    @torch.no_grad()
    def init_random(self, seed: int) -> None:
        """Deterministic random weights: normal / sqrt(fan_in), small biases, v_mix in (0, 1)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("v_mix"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.1)
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))

    def frame_mask(self, layer: int, q_frames: torch.Tensor, k_frames: torch.Tensor) -> torch.Tensor:
        """bool [Tq, Tk]: query frame i reads key frame j (itself, or a committed frame the layer shows it)."""
        qf, kf = q_frames[:, None], k_frames[None, :]
        return (qf == kf) | self.cfg.sees(layer, qf, kf)

    def velocity_full(self, latents, sigma, controls, frames: torch.Tensor | None = None):
        """Velocity of every frame of a sequence computed together, no cache. latents [B, T, C, h, w],
        sigma [B, T], controls [B, T, control_dim], frames int64 [T] (default 0..T-1).

        Frame i reads, in each layer, frames j with j == i or cfg.sees(layer, i, j): the K/V a cached session
        holds. With the history at sigma 0 (as its commit passes saw it) and the last frame at any sigma, the
        last frame's output is what the cached pass computes."""
        T = latents.shape[1]
        frames = torch.arange(T) if frames is None else frames.cpu()
        N = self.cfg.tokens_per_frame

        def attend(layer, q, k, v):
            B = q.shape[0]
            allowed = self.frame_mask(layer, frames, frames).repeat_interleave(N, 0).repeat_interleave(N, 1)
            out = gqa_attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), allowed.to(q.device))
            return out.view(B, T, N, *out.shape[2:])

        return self.dit.forward_frames(latents, sigma, controls, frames, attend)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, Ho, Wo, 3] (T a multiple of frames_per_latent) -> latents [T / F, C, h, w], from a fresh
        encoder state."""
        x = frames_to_images(self.cfg, frames).to(self.dit.final.weight.dtype)
        return self.taehv.encoder(x[None])[0]

    def decode_video(self, latents: torch.Tensor, prime: bool = True) -> torch.Tensor:
        """latents [T, C, h, w] decoded together from a fresh state -> uint8 [T * F, Ho, Wo, 3]. prime: as a
        session decodes, the first latent first runs F - 1 times unseen (warming the temporal state)."""
        F_ = self.cfg.frames_per_latent
        if prime:
            latents = torch.cat([latents[:1].expand(F_ - 1, *latents.shape[1:]), latents])
        images = self.taehv.decoder(latents[None])[0]
        if prime:
            images = images[(F_ - 1) * F_:]
        return images_to_frames(self.cfg, images)


def load(path: str | os.PathLike) -> WaypointModel:
    """A Waypoint .nfd file as a WaypointModel, every tensor's name, dtype and shape checked first."""
    from ..nfd_file import NFDFormatError, load_into, read_header

    table, cfg = read_header(path)
    if not isinstance(cfg, WaypointConfig):
        raise NFDFormatError(f"{path}: not a Waypoint model (architecture {getattr(cfg, 'architecture', 'nfd')!r})")
    return load_into(WaypointModel(cfg, init_seed=None), table, path)


# ---------------------------------------------------------------------------------------------------------------
# Controls


def controls(cfg: WaypointConfig, buttons=(), mouse=(0.0, 0.0), scroll: float = 0.0) -> np.ndarray:
    """One step's control vector, float32 [n_buttons + 3] = [mouse dx, mouse dy, buttons multi-hot, scroll]
    (upstream's order). buttons: pressed button ids (Owl-Control key codes for the published models), each
    < n_buttons; mouse: the raw mouse velocity; scroll: its sign is used (-1, 0, 1)."""
    v = np.zeros(cfg.control_dim, dtype=np.float32)
    v[0], v[1] = float(mouse[0]), float(mouse[1])
    for b in buttons:
        if not 0 <= int(b) < cfg.n_buttons:
            raise ValueError(f"button id {b} out of range [0, {cfg.n_buttons})")
        v[2 + int(b)] = 1.0
    v[-1] = float(np.sign(scroll))
    return v


# ---------------------------------------------------------------------------------------------------------------
# The session


class LayerCache:
    """One layer's ring: K/V [slots, N, Hkv, hd] and the frame each slot holds (-1 when empty)."""

    def __init__(self, cfg: WaypointConfig, layer: int, device, dtype):
        self.cfg, self.layer = cfg, layer
        shape = (cfg.cache_slots(layer), cfg.tokens_per_frame, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_frame = [-1] * shape[0]

    def visible_slots(self, frame: int) -> list[int]:
        """Slots of the committed frames `frame` sees in this layer, in frame order."""
        held = sorted((f, s) for s, f in enumerate(self.slot_frame) if f >= 0 and self.cfg.sees(self.layer, frame, f))
        return [s for _, s in held]

    def commit(self, frame: int, k: torch.Tensor, v: torch.Tensor) -> None:
        slot = self.cfg.slot_for(self.layer, frame)
        if slot is not None:
            self.k[slot], self.v[slot] = k, v
            self.slot_frame[slot] = frame


class WaypointSession:
    """The frame-step API over a WaypointModel (or a Waypoint .nfd path), pure PyTorch, with a real per-layer
    ring cache and the decoder's streaming state. Noise: Philox (nfd_rt.rng) keyed (seed, frame, step slot 0),
    as ReferenceSession keys it; the commit pass at sigma 0 draws none.

    A step generates one latent frame, which stands for `frames_per_latent` (4) video frames:
    `step(controls)` returns them as one uint8 array [4, output_height, output_width, 3], oldest first."""

    def __init__(self, model_or_path: WaypointModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32"):
        if isinstance(model_or_path, (str, os.PathLike)):
            model = load(model_or_path)
        elif isinstance(model_or_path, WaypointModel):
            model = model_or_path
        else:
            raise TypeError(f"expected a WaypointModel or a path to a .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        self.device, self.dtype = torch.device(device), dtypes[dtype]
        self.model = model.to(self.device, self.dtype).eval()
        self.cfg: WaypointConfig = model.cfg
        self.seed = _checks.seed(seed)
        self._closed = False
        self._clear()

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def config(self) -> WaypointConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self, frames: Any = None, latents: Any = None, controls: Any = None) -> None:
        """Forget everything (caches, frame index, the decoder's and encoder's state); then commit the given
        context: `frames` uint8 [T * frames_per_latent, output_height, output_width, 3] (encoded
        frames_per_latent at a time, oldest first) or `latents` float [T, C, h, w]; `controls` [T, control_dim]
        per context latent (zeros when None). Each context latent runs its commit pass at sigma 0."""
        self._check_open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        z = None
        if frames is not None:
            f = self._check_frames(frames)
            if len(f):
                z = self.model.encode(torch.from_numpy(f).to(self.device))
        elif latents is not None:
            z = torch.from_numpy(_checks.latents(latents, self.cfg)).to(self.device, self.dtype)
        count = 0 if z is None else z.shape[0]
        a = _checks.actions(controls, count, self.cfg)
        self._clear()
        for j in range(count):
            self._pass(z[j], 0.0, torch.from_numpy(a[j]).to(self.device, self.dtype), commit=True)
            self.frame_index += 1

    @torch.no_grad()
    def step_latent(self, controls: Any) -> np.ndarray:
        """Generate the next latent frame (float32 [C, h, w]) for `controls` [control_dim] and commit it."""
        self._check_open()
        a = torch.from_numpy(_checks.action(controls, self.cfg)).to(self.device, self.dtype)
        sig = self.cfg.sigmas
        shape = (self.cfg.latent_channels, self.cfg.latent_height, self.cfg.latent_width)
        x = torch.from_numpy(rng.latent_noise(self.seed, self.frame_index, 0, shape)).to(self.device, self.dtype)
        for k in range(self.cfg.num_steps):
            x = x + (sig[k + 1] - sig[k]) * self._pass(x, sig[k], a, commit=False)
        self._pass(x, 0.0, a, commit=True)
        self.frame_index += 1
        return x.float().cpu().numpy()

    @torch.no_grad()
    def step(self, controls: Any) -> np.ndarray:
        """Generate the next latent frame and decode it: uint8 [frames_per_latent, output_height, output_width,
        3], the frames in time order."""
        return self.decode(self.step_latent(controls))

    @torch.no_grad()
    def decode(self, latent: Any) -> np.ndarray:
        """Decode one latent [C, h, w] into uint8 [frames_per_latent, Ho, Wo, 3], advancing this session's
        decoder state (the decoder is streaming: decode each generated latent once, in order). The first decode
        after reset primes the state: the latent runs frames_per_latent - 1 times unseen first (upstream)."""
        self._check_open()
        z = torch.from_numpy(_checks.latents(latent, self.cfg)).to(self.device, self.dtype)
        dec = self.model.taehv.decoder
        if not self._decoder_primed:
            for _ in range(self.cfg.frames_per_latent - 1):
                _, self._decoder_memory = dec.step(z, self._decoder_memory)
            self._decoder_primed = True
        images, self._decoder_memory = dec.step(z, self._decoder_memory)
        return images_to_frames(self.cfg, images[0]).cpu().numpy()

    def fork(self) -> "WaypointSession":
        """An independent copy of this world (caches, frame index, decoder state), sharing the weights."""
        self._check_open()
        twin = copy.copy(self)
        twin._caches = [copy.copy(c) for c in self._caches]
        for c in twin._caches:
            c.k, c.v, c.slot_frame = c.k.clone(), c.v.clone(), list(c.slot_frame)
        twin._decoder_memory = [None if m is None else m.clone() for m in self._decoder_memory]
        return twin

    def close(self) -> None:
        self._closed = True
        self._caches = None

    def __enter__(self) -> "WaypointSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    def _clear(self) -> None:
        self._caches = [LayerCache(self.cfg, i, self.device, self.dtype) for i in range(self.cfg.depth)]
        self._decoder_memory = [None] * self.model.taehv.decoder.num_memories
        self._decoder_primed = False
        self.frame_index = 0

    def _check_frames(self, x: Any) -> np.ndarray:
        f = _checks._as_numpy(x, "frames")
        cfg = self.cfg
        want = (cfg.output_height, cfg.output_width, 3)
        if f.ndim != 4 or f.shape[1:] != want:
            raise ValueError(f"frames must be uint8 [T, {want[0]}, {want[1]}, 3] for {cfg.name}, got shape {f.shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"frames must have dtype uint8 (RGB 0..255), got {f.dtype}")
        if len(f) % cfg.frames_per_latent:
            raise ValueError(f"frames: {len(f)} frames is not a multiple of {cfg.frames_per_latent} (the frames "
                             "of one latent)")
        return np.ascontiguousarray(f)

    def _pass(self, x: torch.Tensor, sigma: float, a: torch.Tensor, commit: bool) -> torch.Tensor:
        """One transformer pass of the current frame against the caches; with `commit`, store its K/V in the
        layers that keep this frame."""
        i, caches = self.frame_index, self._caches
        new_kv = []

        def attend(layer, q, k, v):  # [1, 1, N, H, hd]
            c = caches[layer]
            slots = c.visible_slots(i)
            keys = torch.cat([c.k[slots].flatten(0, 1), k[0, 0]])[None]
            vals = torch.cat([c.v[slots].flatten(0, 1), v[0, 0]])[None]
            new_kv.append((k[0, 0], v[0, 0]))
            return gqa_attention(q[0], keys, vals)[None]

        s = torch.full((1, 1), float(sigma), device=self.device, dtype=self.dtype)
        vel = self.model.dit.forward_frames(x[None, None], s, a[None, None], torch.tensor([i]), attend)
        if commit:
            for layer, (k, v) in enumerate(new_kv):
                caches[layer].commit(i, k, v)
        return vel[0, 0]


# ---------------------------------------------------------------------------------------------------------------
# The non-cached oracle


@torch.no_grad()
def full_rollout(model: WaypointModel, controls: Any, seed: int = 0, context: Any = None,
                 context_controls: Any = None, pass_hook: Callable | None = None) -> np.ndarray:
    """The latents a WaypointSession(model, seed) generates after reset(latents=context) for `controls`
    [T, control_dim], computed without any cache: every pass reruns the whole history (at sigma 0, as committed)
    with the current frame under `velocity_full`'s per-layer masks. Returns float32 [T, C, h, w]."""
    cfg = model.cfg
    dev, dt = model.dit.final.weight.device, model.dit.final.weight.dtype
    ctrl = torch.from_numpy(np.asarray(controls, dtype=np.float32)).to(dev, dt)
    hist = [] if context is None else list(torch.from_numpy(np.asarray(context, dtype=np.float32)).to(dev, dt))
    n0 = len(hist)
    cc = np.zeros((n0, cfg.control_dim), np.float32) if context_controls is None else context_controls
    hist_ctrl = list(torch.from_numpy(np.asarray(cc, dtype=np.float32)).to(dev, dt))
    sig = cfg.sigmas
    shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    out = []
    for t in range(len(ctrl)):
        f = n0 + t
        x = torch.from_numpy(rng.latent_noise(seed, f, 0, shape)).to(dev, dt)
        for k in range(cfg.num_steps):
            lat = torch.stack(hist + [x])[None]
            sigma = torch.tensor([[0.0] * f + [sig[k]]], device=dev, dtype=dt)
            cs = torch.stack(hist_ctrl + [ctrl[t]])[None]
            v = model.velocity_full(lat, sigma, cs)[0, -1]
            if pass_hook is not None:
                pass_hook(f, k, v)
            x = x + (sig[k + 1] - sig[k]) * v
        hist.append(x)
        hist_ctrl.append(ctrl[t])
        out.append(x.float().cpu().numpy())
    return np.stack(out)
