"""A second, independent statement of upstream Oasis-500M's math, over upstream's tensor names: a test oracle.

Written from the facts listed in docs/oasis.md (upstream's code is read for facts, not copied), deliberately
unlike nfd_rt.reference.oasis: patch embeddings as strided convolutions, RoPE with complex numbers and angles
computed in float32 as upstream's RotaryEmbedding does, upstream's (py, px, c) unpatchify, PyTorch's SDPA with
is_causal for the temporal axis and positions 0.. of the clip, the VAE's mean taken from the full quant_conv.
If the converter maps a tensor wrongly or the reference misreads a fact, the two disagree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by angles[..., i] (as complex numbers); features past 2 * P pass unchanged."""
    P = angles.shape[-1]
    head = torch.view_as_complex(x[..., : 2 * P].float().reshape(*x.shape[:-1], P, 2).contiguous())
    rotated = torch.view_as_real(head * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    return torch.cat([rotated, x[..., 2 * P:]], dim=-1)


def _pixel_angles(rows: int, cols: int, dim: int, max_freq: float) -> torch.Tensor:
    """[rows, cols, dim] angles, float32 as upstream: dim / 2 row pairs, then dim / 2 column pairs."""
    freqs = torch.linspace(1.0, max_freq / 2, dim // 2) * math.pi
    r = torch.linspace(-1, 1, rows)[:, None, None] * freqs
    c = torch.linspace(-1, 1, cols)[None, :, None] * freqs
    return torch.cat(torch.broadcast_tensors(r, c), dim=-1)


def _linear(x, sd, name, bias=True):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias") if bias else None)


def dit_forward(sd: dict, cfg, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Upstream DiT forward on a clip: x [B, T, C, H, W], t [B, T] integer levels, actions [B, T, A] -> v."""
    B, T, C, H, W = x.shape
    D, nh, p = cfg.hidden_size, cfg.num_heads, cfg.patch_size
    hd = D // nh
    tok = F.conv2d(x.reshape(B * T, C, H, W), sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    h, w = tok.shape[-2:]
    tok = tok.permute(0, 2, 3, 1).reshape(B, T, h, w, D)

    half = cfg.time_embed_dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = _linear(F.silu(_linear(emb, sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    c = c + _linear(actions, sd, "external_cond")

    ang_s = _pixel_angles(h, w, cfg.spatial_rope_dim, cfg.spatial_rope_max_freq)  # [h, w, hd/2]
    inv = 1.0 / (cfg.temporal_rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    ang_t = torch.arange(T).float()[:, None] * inv  # [T, hd/2]

    def ln(z):
        return F.layer_norm(z, (D,), eps=cfg.norm_eps)

    def expand(v):  # [B, T, D] -> [B, T, 1, 1, D]
        return v[:, :, None, None, :]

    for i in range(cfg.depth):
        for axis in ("s", "t"):
            pre = f"blocks.{i}.{axis}_"
            mods = _linear(F.silu(c), sd, pre + "adaLN_modulation.1").chunk(6, dim=-1)
            sh1, sc1, g1, sh2, sc2, g2 = (expand(m) for m in mods)
            y = ln(tok) * (1 + sc1) + sh1
            q, k, v = (z.reshape(B, T, h, w, nh, hd) for z in _linear(y, sd, pre + "attn.to_qkv", bias=False).chunk(3, -1))
            if axis == "s":
                a = ang_s[None, None, :, :, None, :]
                q, k = _rope(q, a), _rope(k, a)
                q, k, v = (z.reshape(B * T, h * w, nh, hd).transpose(1, 2) for z in (q, k, v))
                o = F.scaled_dot_product_attention(q, k, v)
                o = o.transpose(1, 2).reshape(B, T, h, w, D)
            else:
                a = ang_t[None, :, None, None, None, :]
                q, k = _rope(q, a), _rope(k, a)
                q, k, v = (z.permute(0, 2, 3, 4, 1, 5).reshape(B * h * w, nh, T, hd) for z in (q, k, v))
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                o = o.reshape(B, h, w, nh, T, hd).permute(0, 4, 1, 2, 3, 5).reshape(B, T, h, w, D)
            tok = tok + g1 * _linear(o, sd, pre + "attn.to_out")
            y = ln(tok) * (1 + sc2) + sh2
            tok = tok + g2 * _linear(F.gelu(_linear(y, sd, pre + "mlp.fc1"), approximate="tanh"), sd, pre + "mlp.fc2")

    shift, scale = (expand(m) for m in _linear(F.silu(c), sd, "final_layer.adaLN_modulation.1").chunk(2, dim=-1))
    out = _linear(ln(tok) * (1 + scale) + shift, sd, "final_layer.linear")  # [B, T, h, w, p p C] as (py, px, c)
    out = out.reshape(B, T, h, w, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)
    return out.reshape(B, T, C, h * p, w * p)


def _vit(x: torch.Tensor, sd: dict, prefix: str, depth: int, heads: int, cfg) -> torch.Tensor:
    B, N, E = x.shape
    hd = E // heads
    rows, cols = cfg.vae_grid
    ang = _pixel_angles(rows, cols, cfg.vae.rope_dim, cfg.vae.rope_max_freq).reshape(N, -1)[None, :, None, :]
    for i in range(depth):
        pre = f"{prefix}.{i}."
        y = F.layer_norm(x, (E,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps=cfg.vae.norm_eps)
        q, k, v = (z.reshape(B, N, heads, hd) for z in _linear(y, sd, pre + "attn.qkv").chunk(3, -1))
        q, k = _rope(q, ang), _rope(k, ang)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + _linear(o.transpose(1, 2).reshape(B, N, E), sd, pre + "attn.proj")
        y = F.layer_norm(x, (E,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps=cfg.vae.norm_eps)
        x = x + _linear(F.gelu(_linear(y, sd, pre + "mlp.fc1")), sd, pre + "mlp.fc2")
    return x


def vae_encode_mean(sd: dict, cfg, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] [B, 3, H, W] -> posterior mean tokens [B, N, C] (unscaled)."""
    tok = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.vae.patch_size)
    x = _vit(tok.flatten(2).transpose(1, 2), sd, "encoder", cfg.vae.encoder_depth, cfg.vae.encoder_heads, cfg)
    x = F.layer_norm(x, (cfg.vae.encoder_dim,), sd["enc_norm.weight"], sd["enc_norm.bias"], eps=cfg.vae.norm_eps)
    mean, _logvar = _linear(x, sd, "quant_conv").chunk(2, dim=-1)
    return mean


def vae_decode(sd: dict, cfg, z: torch.Tensor) -> torch.Tensor:
    """latent tokens (unscaled) [B, N, C] -> images [B, 3, H, W]."""
    x = _vit(_linear(z, sd, "post_quant_conv"), sd, "decoder", cfg.vae.decoder_depth, cfg.vae.decoder_heads, cfg)
    x = F.layer_norm(x, (cfg.vae.decoder_dim,), sd["dec_norm.weight"], sd["dec_norm.bias"], eps=cfg.vae.norm_eps)
    x = _linear(x, sd, "predictor")
    P = cfg.vae.patch_size
    rows, cols = cfg.vae_grid
    x = x.reshape(x.shape[0], rows, cols, 3, P, P).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(x.shape[0], 3, rows * P, cols * P)


def generate(dit_sd: dict, cfg, prompt_latents: torch.Tensor, actions: torch.Tensor, noise) -> torch.Tensor:
    """Upstream's sampling loop (generate.py) over this oracle: prompt_latents [T0, C, h, w] (DiT space),
    actions [T, A] for frames 0..T-1 (the prompt frames' first), noise(frame) -> [C, h, w] (before the clamp).
    Returns every frame's latent [T, C, h, w]."""
    from nfd_rt.configs import sigmoid_alphas_cumprod

    ab = torch.from_numpy(sigmoid_alphas_cumprod(cfg.noise_levels))
    x = prompt_latents[None].clone()
    levels = list(cfg.timesteps) + [-1]
    for i in range(prompt_latents.shape[0], actions.shape[0]):
        x = torch.cat([x, noise(i).clamp(-cfg.noise_clamp, cfg.noise_clamp)[None, None]], dim=1)
        start = max(0, i + 1 - cfg.max_frames)
        for k in range(cfg.num_steps):
            t, t_next = levels[k], levels[k + 1]
            clip = x[:, start:]
            tt = torch.tensor([[cfg.context_level] * (clip.shape[1] - 1) + [t]])
            v = dit_forward(dit_sd, cfg, clip, tt, actions[None, start:i + 1])[:, -1]
            a = ab[t]
            a_next = ab[t_next] if t_next >= 0 else torch.tensor(1.0)
            x0 = a.sqrt() * x[:, -1] - (1 - a).sqrt() * v
            eps = ((1 / a).sqrt() * x[:, -1] - x0) / (1 / a - 1).sqrt()
            x[:, -1] = a_next.sqrt() * x0 + eps * (1 - a_next).sqrt()
    return x[0]
