"""PyTorch reference NFD model: the oracle every other backend is checked against.

Written for clarity, not speed. Every formula here is restated in docs/architecture.md; the C++ runtime
implements exactly the same math, tensor by tensor (state_dict names are the .nfd tensor names).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ring
from ..configs import NFDConfig

# ---------------------------------------------------------------------------------------------------------------
# Small pieces


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then `* (1 + scale) + shift` (adaLN)."""
    # int(): the normalized shape stays a constant when the ONNX exporter traces this (nfd_rt.export.to_onnx).
    return F.layer_norm(x, (int(x.shape[-1]),), eps=eps) * (1 + scale) + shift


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of `t * 1000`: [cos(t f_i), sin(t f_i)], f_i = 10000^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = (t.to(torch.float64) * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(torch.float32)


class EmbedMLP(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


def rope_angles(cfg: NFDConfig, frame_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the 3D RoPE angles for the tokens of the given frames.

    frame_index: int64 [T] (absolute frame positions). Returns cos, sin: float32 [T, N, head_dim // 2].
    Pair i of a head (elements 2i, 2i+1) belongs to the time part for i < dt/2, then the row part, then the
    column part; within a part of size d, pair j rotates by pos * theta^(-2j/d). Angles in float64.
    """
    rows, cols = cfg.grid
    dt, dh, dw = cfg.rope_dims
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)  # [N]
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)  # [N]
    t = frame_index.to(torch.float64)

    def inv_freq(d: int) -> torch.Tensor:
        return cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)

    T, N = t.shape[0], r.shape[0]
    ang_t = (t[:, None] * inv_freq(dt)[None, :])[:, None, :].expand(T, N, dt // 2)
    ang_h = (r[:, None] * inv_freq(dh)[None, :])[None].expand(T, N, dh // 2)
    ang_w = (c[:, None] * inv_freq(dw)[None, :])[None].expand(T, N, dw // 2)
    ang = torch.cat([ang_t, ang_h, ang_w], dim=-1)
    return torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]). x: [..., T, N, H, hd]; cos/sin: [T, N, hd/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2)


def frame_visible(cfg: NFDConfig, query_frame: torch.Tensor, key_frame: torch.Tensor) -> torch.Tensor:
    """True where a query of frame i may attend to a key of frame j: j <= i and (j is a sink or i - j <= window)."""
    return ring.sees(query_frame[:, None], key_frame[None, :], cfg.sink_frames, cfg.window)


# ---------------------------------------------------------------------------------------------------------------
# DiT


class DiTBlock(nn.Module):
    def __init__(self, cfg: NFDConfig):
        super().__init__()
        D = cfg.hidden_size
        self.cfg = cfg
        self.adaln = nn.Linear(D, 6 * D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.fc1 = nn.Linear(D, cfg.mlp_ratio * D)
        self.fc2 = nn.Linear(cfg.mlp_ratio * D, D)

    def qkv_heads(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h: [B, T, N, D] (already modulated) -> q, k, v [B, T, N, H, hd] with RoPE on q and k."""
        B, T, N, _ = h.shape
        q, k, v = self.qkv(h).view(B, T, N, 3, self.cfg.num_heads, self.cfg.head_dim).unbind(3)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, c, cos, sin, attend):
        """x: [B, T, N, D]; c: [B, T, D]; attend(q, k, v) -> [B, T, N, H, hd]. Returns (x, k, v)."""
        eps = self.cfg.norm_eps
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)[:, :, None, :].chunk(6, dim=-1)
        q, k, v = self.qkv_heads(modulate(x, shift1, scale1, eps), cos, sin)
        a = attend(q, k, v).flatten(-2)
        x = x + gate1 * self.proj(a)
        h = self.fc2(F.gelu(self.fc1(modulate(x, shift2, scale2, eps)), approximate="tanh"))
        return x + gate2 * h, k, v


def masked_attention(q, k, v, q_frames, k_frames, cfg: NFDConfig):
    """Softmax attention of q [B, Tq, N, H, hd] over k, v [B, Tk, N, H, hd] under the frame visibility rule."""
    B, Tq, N, H, hd = q.shape
    Tk = k.shape[1]
    visible = frame_visible(cfg, q_frames, k_frames).to(q.device)  # [Tq, Tk]
    mask = visible.repeat_interleave(N, 0).repeat_interleave(N, 1)  # [Tq*N, Tk*N]
    qh = q.reshape(B, Tq * N, H, hd).transpose(1, 2)
    kh = k.reshape(B, Tk * N, H, hd).transpose(1, 2)
    vh = v.reshape(B, Tk * N, H, hd).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vh  # [B, H, Tq*N, hd]
    return out.transpose(1, 2).reshape(B, Tq, N, H, hd)


class FinalLayer(nn.Module):
    def __init__(self, cfg: NFDConfig):
        super().__init__()
        self.adaln = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_dim)
        self.eps = cfg.norm_eps

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaln(c)[:, :, None, :].chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale, self.eps))


class DiT(nn.Module):
    def __init__(self, cfg: NFDConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_embed = nn.Linear(cfg.patch_dim, D)
        self.time_embed = EmbedMLP(cfg.time_embed_dim, D)
        self.action_embed = EmbedMLP(cfg.action_dim, D)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)

    # Patch (c, py, px) ordering, tokens row-major over the patch grid.
    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, T, C, h, w] -> [B, T, N, C*p*p]."""
        B, T, C, h, w = z.shape
        p = self.cfg.patch_size
        z = z.reshape(B, T, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(B, T, (h // p) * (w // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, N, C*p*p] -> [B, T, C, h, w]."""
        cfg = self.cfg
        B, T = x.shape[:2]
        p, C = cfg.patch_size, cfg.latent_channels
        rows, cols = cfg.grid
        x = x.reshape(B, T, rows, cols, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, T, C, rows * p, cols * p)

    def conditioning(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """c = SiLU(time_embed(t) + action_embed(a)), per frame. t: [B, T]; actions: [B, T, A] -> [B, T, D]."""
        features = timestep_features(t, self.cfg.time_embed_dim).to(actions.dtype)
        temb = self.time_embed(features)
        return F.silu(temb + self.action_embed(actions))

    def forward_frames(self, latents, t, actions, frame_index, attend_layer):
        """Run the DiT on frames whose attention is supplied per layer.

        latents [B, T, C, h, w], t [B, T], actions [B, T, A], frame_index int64 [T];
        attend_layer(layer, q, k, v) -> [B, T, N, H, hd]. Returns the velocity [B, T, C, h, w].
        """
        cos, sin = (a.to(latents.device, latents.dtype) for a in rope_angles(self.cfg, frame_index.cpu()))
        c = self.conditioning(t, actions)
        x = self.patch_embed(self.patchify(latents))
        for layer, block in enumerate(self.blocks):
            x, _, _ = block(x, c, cos, sin, lambda q, k, v, layer=layer: attend_layer(layer, q, k, v))
        return self.unpatchify(self.final(x, c))


# ---------------------------------------------------------------------------------------------------------------
# VAE


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Level(nn.Module):
    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if resample is not None:
            setattr(self, name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        if self.resample_name == "upsample":
            x = self.upsample(F.interpolate(x, scale_factor=2, mode="nearest"))
        elif self.resample_name == "downsample":
            x = self.downsample(x)
        return x


class VAEDecoder(nn.Module):
    """latent [B, C, h, w] -> image in [-1, 1] [B, 3, 8h, 8w]."""

    def __init__(self, cfg: NFDConfig):
        super().__init__()
        v = cfg.vae
        ch, g, eps = v.channels, v.norm_groups, v.norm_eps
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        levels, cin = [], ch[-1]
        for i in reversed(range(len(ch))):  # lowest resolution first; levels[k] is channel level len-1-k
            blocks = []
            for _ in range(v.num_res_blocks):
                blocks.append(ResBlock(cin, ch[i], g, eps))
                cin = ch[i]
            up = nn.Conv2d(cin, cin, 3, padding=1) if i > 0 else None
            levels.append(Level(blocks, up, "upsample"))
        self.levels = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for level in self.levels:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VAEEncoder(nn.Module):
    """image in [-1, 1] [B, 3, H, W] -> latent [B, C, H/8, W/8] (deterministic)."""

    def __init__(self, cfg: NFDConfig):
        super().__init__()
        v = cfg.vae
        ch, g, eps = v.channels, v.norm_groups, v.norm_eps
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        levels, cin = [], ch[0]
        for i in range(len(ch)):
            blocks = []
            for _ in range(v.num_res_blocks):
                blocks.append(ResBlock(cin, ch[i], g, eps))
                cin = ch[i]
            down = nn.Conv2d(cin, cin, 3, stride=2, padding=1) if i < len(ch) - 1 else None
            levels.append(Level(blocks, down, "downsample"))
        self.levels = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(g, ch[-1], eps=eps)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.levels:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VAE(nn.Module):
    def __init__(self, cfg: NFDConfig):
        super().__init__()
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1]: u / 127.5 - 1."""
    return frames.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0


def images_to_frames(images: torch.Tensor) -> torch.Tensor:
    """float32 [T, 3, H, W] -> uint8 [T, H, W, 3]: clamp(floor((x + 1) * 127.5 + 0.5), 0, 255)."""
    u = torch.floor((images + 1.0) * 127.5 + 0.5).clamp(0, 255)
    return u.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# The whole model


class NFDModel(nn.Module):
    """DiT + VAE. `velocity` runs a whole clip under the block-causal (sink + rolling window) mask."""

    def __init__(self, cfg: NFDConfig, init_seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.dit = DiT(cfg)
        self.vae = VAE(cfg)
        if init_seed is not None:
            self.init_random(init_seed)

    @torch.no_grad()
    def init_random(self, seed: int) -> None:
        """Deterministic random init. Not adaLN-Zero (zeros would make every parity test trivially pass)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1 and "norm" in name:  # GroupNorm affine
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))

    def velocity(self, latents, t, actions, frame_offset: int = 0):
        """Velocity of every frame of a clip. latents [B, T, C, h, w], t [B, T], actions [B, T, A].

        Frame i sees frames j <= i that are sinks or within the window (same rule as the KV cache), so frame i's
        output equals what a cached rollout computes for it.
        """
        T = latents.shape[1]
        frames = torch.arange(frame_offset, frame_offset + T)
        return self.dit.forward_frames(
            latents, t, actions, frames,
            lambda layer, q, k, v: masked_attention(q, k, v, frames, frames, self.cfg),
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[T, C, h, w] -> uint8 [T, H, W, 3]."""
        return images_to_frames(self.vae.decoder(latents))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> [T, C, h, w] (in the model's dtype)."""
        return self.vae.encoder(frames_to_images(frames).to(self.vae.encoder.conv_in.weight.dtype))
