"""OasisStaticSession: Oasis' cached sampler as a skilled PyTorch user writes it for speed; the strong baseline of
benchmarks/fps.py for Oasis configs.

Same weights and the same math as `OasisReferenceSession(sampler="cached")` (the readable oracle, which gathers
and concatenates the cached K/V per layer and pass and runs the model one pass at a time), written for speed:

- the temporal K/V cache preallocated, one buffer per layer and K/V, `[N, H, slots + 1, hd]` (token-major: the
  temporal attention of token n over the frames it sees reads one contiguous `[H, slots + 1, hd]` block): ring
  slot s = frame % slots holds a cached frame, index `slots` (the tail) the frame being denoised, rewritten in
  place every pass; the cache-write pass copies each layer's K/V into the frame's slot in place (`index_copy_`,
  the slot computed on the device from the frame index), after that layer's attention (the slot still holds the
  oldest visible frame, which the write pass sees, as in the reference);
- `F.scaled_dot_product_attention` on 4-D inputs everywhere (PyTorch's fused kernels): spatial attention
  `[1, H, N, hd]`, temporal attention `[N, H, 1, hd]` over the cache `[N, H, slots + 1, hd]` (no mask at a full
  window; while the cache fills a boolean mask built on the device from the frame index hides empty slots), and
  the ViT decoder's attention;
- per frame, the conditioning of every pass position (the DDIM levels, then the write pass at `context_level`)
  is one row of a `[steps + 1, D]` matrix, so each sub-block's adaLN is one GEMM per frame, not one per pass;
  the time embeddings of the levels are computed once at construction, the spatial RoPE tables too, the temporal
  RoPE angles on the device from the frame index (float64, as the reference);
- DDIM (eta 0, v-prediction) as `x = A_k x + B_k v` with `A_k`, `B_k` from the float32 alpha_bar in float64
  (the reference's upstream form, simplified: equal up to rounding; the C++ runtime does the same);
- Philox4x32-10 start noise on the device (`nfd_rt.baselines.static.philox_normal`), clamped as the reference;
- nothing synchronises the host but the copy of the finished frame.

The whole frame (the DDIM passes, the cache-write pass and the decode) is one module method whose per-frame
values (frame index, action, slot, visibility mask) are device buffers or computed from them: under
`compile_mode` it is one `torch.compile(fullgraph=True)` call, two graphs at most (the cache filling, masked; a
full window) and no recompiles per frame. `reset(latents=...)` runs the write passes of the context eagerly.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from ..configs import OasisConfig
from ..reference.model import modulate
from ..reference.oasis import (OasisModel, images_to_frames, level_features, patchify,
                               pixel_rope_angles, unpatchify)
from ._compile import compile_frame
from .static import philox_normal


def _padded_rope(ang: torch.Tensor, pairs: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [M, pairs] of float64 angles [M, P <= pairs]; pairs past P get cos 1, sin 0 (they pass unrotated,
    exactly: x0 * 1 - x1 * 0 == x0), so one rotation serves partial RoPE too."""
    cos = torch.ones(ang.shape[0], pairs, dtype=torch.float64)
    sin = torch.zeros(ang.shape[0], pairs, dtype=torch.float64)
    cos[:, : ang.shape[1]] = torch.cos(ang)
    sin[:, : ang.shape[1]] = torch.sin(ang)
    return cos.to(device, dtype), sin.to(device, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the adjacent pairs (x[2i], x[2i+1]) of the last axis (the reference's `rotate_pairs`)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)


class OasisStaticFrame(nn.Module):
    """Weights, static buffers and the whole-frame function. Buffers change in place only."""

    def __init__(self, model: OasisModel, device: torch.device, dtype: torch.dtype, seed: int):
        super().__init__()
        cfg: OasisConfig = model.cfg
        self.cfg, self.seed, self.dtype = cfg, seed, dtype
        self.dit = model.dit
        self.decoder = model.vae.decoder
        N, H, hd = cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim
        self.N, self.slots = N, cfg.cache_frames
        # One buffer per layer and K/V (gpt-fast's KVCache): in-place updates of a whole buffer, never of a view,
        # are what Inductor turns into in-place kernels. Slots 0 .. slots-1 the ring, index `slots` the tail.
        for layer in range(cfg.depth):
            for kv in "kv":
                self.register_buffer(f"{kv}_cache_{layer}",
                                     torch.zeros(N, H, self.slots + 1, hd, device=device, dtype=dtype))
        self.register_buffer("frame", torch.zeros((), dtype=torch.int64, device=device))  # frame being generated
        self.register_buffer("action", torch.zeros(cfg.action_dim, device=device, dtype=dtype))
        self.register_buffer("latent", torch.zeros(cfg.latent_channels, cfg.latent_height, cfg.latent_width,
                                                   device=device, dtype=dtype))  # the last frame's latent
        self.register_buffer("tail", torch.full((1,), self.slots, dtype=torch.int64, device=device))
        self.register_buffer("slot_index", torch.arange(self.slots, device=device))

        # Spatial RoPE: fixed per token [N, 1, hd/2] (broadcast over heads); the temporal frequencies [hd/2].
        rows, cols = cfg.grid
        cos, sin = _padded_rope(pixel_rope_angles(rows, cols, cfg.spatial_rope_dim, cfg.spatial_rope_max_freq),
                                hd // 2, device, dtype)
        self.register_buffer("s_cos", cos[:, None, :])
        self.register_buffer("s_sin", sin[:, None, :])
        self.register_buffer("t_freq", (cfg.temporal_rope_theta ** (
            -torch.arange(0, hd, 2, dtype=torch.float64) / hd)).to(device))
        # ViT decoder RoPE [M, 1, hd_vae/2].
        v = cfg.vae
        vrows, vcols = cfg.vae_grid
        cos, sin = _padded_rope(pixel_rope_angles(vrows, vcols, v.rope_dim, v.rope_max_freq),
                                v.decoder_dim // v.decoder_heads // 2, device, dtype)
        self.register_buffer("v_cos", cos[:, None, :])
        self.register_buffer("v_sin", sin[:, None, :])

        # Time embeddings of the pass positions: the DDIM levels, then the write pass at context_level.
        levels = torch.tensor(list(cfg.timesteps) + [cfg.context_level], device=device)
        with torch.no_grad():
            self.register_buffer("temb", self.dit.time_embed(level_features(levels, cfg.time_embed_dim).to(dtype)))
        # DDIM (eta 0) from a v-prediction: x_next = A x + B v, from upstream's
        # x0 = sqrt(a) x - sqrt(1 - a) v, eps = sqrt(1 - a) x + sqrt(a) v, x_next = sqrt(a') x0 + sqrt(1 - a') eps.
        ab = cfg.alphas_cumprod()
        ts = list(cfg.timesteps)
        self.ddim = []
        for k, level in enumerate(ts):
            a = float(ab[level])
            an = float(ab[ts[k + 1]]) if k + 1 < len(ts) else 1.0
            self.ddim.append((math.sqrt(an * a) + math.sqrt((1 - an) * (1 - a)),
                              math.sqrt((1 - an) * a) - math.sqrt(an * (1 - a))))

    # -- pieces ---------------------------------------------------------------------------------------------
    def noise(self) -> torch.Tensor:
        cfg = self.cfg
        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        z = philox_normal(self.seed, self.frame, 0, math.prod(shape), self.frame.device).reshape(shape)
        return z.clamp(-cfg.noise_clamp, cfg.noise_clamp).to(self.dtype)

    def time_rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [hd/2] of the current frame's temporal position (its absolute index)."""
        ang = self.frame.to(torch.float64) * self.t_freq
        return torch.cos(ang).to(self.dtype), torch.sin(ang).to(self.dtype)

    def mask(self) -> torch.Tensor:
        """[1, 1, 1, slots + 1] bool while the cache fills: the slots written so far (frames 0 .. f-1 sit in slots
        0 .. f-1, all within the window) and the tail (the frame itself)."""
        held = torch.cat([self.slot_index < self.frame, torch.ones(1, dtype=torch.bool, device=self.frame.device)])
        return held.view(1, 1, 1, -1)

    def mods(self, c: torch.Tensor) -> tuple[list, torch.Tensor]:
        """adaLN vectors of the pass positions in the rows of c [P, D]: per layer (spatial, temporal) [P, 6D], and
        the final layer's [P, 2D]: one GEMM per sub-block for all passes of a frame."""
        per_layer = [(blk.spatial.adaln(c), blk.temporal.adaln(c)) for blk in self.dit.blocks]
        return per_layer, self.dit.final.adaln(c)

    def dit_pass(self, x: torch.Tensor, p: int, mods, final_mods, t_cos, t_sin, mask, write: bool):
        """One DiT pass of the current frame's latent x [C, h, w] at pass row p of the adaLN vectors. With
        `write` (the cache-write pass), each layer's temporal K/V go to the frame's ring slot and the pass stops
        after the last layer's. Returns the v-prediction [C, h, w] (None with `write`)."""
        cfg, N = self.cfg, self.N
        D, H, hd, eps = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.norm_eps
        h = self.dit.patch_embed(patchify(x, cfg.patch_size))  # [N, D]
        if write:
            slot = (self.frame % self.slots).view(1)
        for layer, blk in enumerate(self.dit.blocks):
            # Spatial: full attention among the frame's N tokens.
            sub = blk.spatial
            s1, c1, g1, s2, c2, g2 = mods[layer][0][p].chunk(6)
            q, k, v = sub.qkv(modulate(h, s1, c1, eps)).view(N, 3, H, hd).unbind(1)  # [N, H, hd]
            q = apply_rope(q, self.s_cos, self.s_sin).transpose(0, 1)[None]  # [1, H, N, hd]
            k = apply_rope(k, self.s_cos, self.s_sin).transpose(0, 1)[None]
            a = F.scaled_dot_product_attention(q, k, v.transpose(0, 1)[None])  # [1, H, N, hd]
            h = h + g1 * sub.proj(a[0].transpose(0, 1).reshape(N, D))
            h = h + g2 * sub.fc2(F.gelu(sub.fc1(modulate(h, s2, c2, eps)), approximate="tanh"))
            # Temporal: token n over token n of the frames it sees (the cache) and of itself (the tail).
            sub = blk.temporal
            s1, c1, g1, s2, c2, g2 = mods[layer][1][p].chunk(6)
            q, k, v = sub.qkv(modulate(h, s1, c1, eps)).view(N, 3, H, hd).unbind(1)
            q = apply_rope(q, t_cos, t_sin)[:, :, None]  # [N, H, 1, hd]
            k = apply_rope(k, t_cos, t_sin)[:, :, None]
            v = v[:, :, None]
            kc, vc = getattr(self, f"k_cache_{layer}"), getattr(self, f"v_cache_{layer}")
            if write and layer == cfg.depth - 1:  # the last layer's K/V are all the write pass still needs
                kc.index_copy_(2, slot, k)
                vc.index_copy_(2, slot, v)
                return None
            kc.index_copy_(2, self.tail, k)
            vc.index_copy_(2, self.tail, v)
            a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)  # [N, H, 1, hd]
            if write:  # after the attention: the slot still held the oldest visible frame for it
                kc.index_copy_(2, slot, k)
                vc.index_copy_(2, slot, v)
            h = h + g1 * sub.proj(a.reshape(N, D))
            h = h + g2 * sub.fc2(F.gelu(sub.fc1(modulate(h, s2, c2, eps)), approximate="tanh"))
        shift, scale = final_mods[p].chunk(2)
        out = self.dit.final.linear(modulate(h, shift, scale, eps))  # [N, C p p]
        rows, cols = cfg.grid
        return unpatchify(out, cfg.patch_size, cfg.latent_channels, rows, cols)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The ViT decoder with SDPA: latent [C, h, w] -> uint8 [H, W, 3]."""
        cfg, dec = self.cfg, self.decoder
        heads = cfg.vae.decoder_heads
        x = dec.from_latent((z / cfg.vae.scaling_factor).flatten(1).transpose(0, 1))  # [M, E], tokens row-major
        M, E = x.shape
        for blk in dec.blocks:
            q, k, v = blk.qkv(blk.norm1(x)).view(M, 3, heads, E // heads).unbind(1)
            q = apply_rope(q, self.v_cos, self.v_sin).transpose(0, 1)[None]
            k = apply_rope(k, self.v_cos, self.v_sin).transpose(0, 1)[None]
            a = F.scaled_dot_product_attention(q, k, v.transpose(0, 1)[None])  # [1, heads, M, hd]
            x = x + blk.proj(a[0].transpose(0, 1).reshape(M, E))
            x = x + blk.fc2(F.gelu(blk.fc1(blk.norm2(x))))
        rows, cols = cfg.vae_grid
        images = unpatchify(dec.to_pixels(dec.norm(x)), cfg.vae.patch_size, 3, rows, cols)  # [3, H, W]
        return images_to_frames(images[None])[0]

    def conditioning(self) -> torch.Tensor:
        """c [P, D] of every pass position for the action in `self.action`."""
        return F.silu(self.temb + self.dit.action_embed(self.action)[None])

    def forward(self, full: bool) -> torch.Tensor:
        """The whole frame for `self.action`: uint8 [H, W, 3] on the device. `full`: every ring slot holds a
        visible frame (no mask)."""
        cfg = self.cfg
        mask = None if full else self.mask()
        t_cos, t_sin = self.time_rope()
        mods, final_mods = self.mods(self.conditioning())
        x = self.noise()
        for k, (A, B) in enumerate(self.ddim):
            v = self.dit_pass(x, k, mods, final_mods, t_cos, t_sin, mask, write=False)
            x = A * x + B * v
        self.latent.copy_(x)
        if self.slots:  # max_frames 1: no frame is ever seen again
            self.dit_pass(x, cfg.num_steps, mods, final_mods, t_cos, t_sin, mask, write=True)
        self.frame.add_(1)
        return self.decode(x)

    def commit(self, full: bool) -> None:
        """A given frame (`self.latent`, `self.action`) joins the context: the cache-write pass alone (reset)."""
        if self.slots:
            c = self.conditioning()[-1:]  # the write pass's row
            mods, final_mods = self.mods(c)
            t_cos, t_sin = self.time_rope()
            self.dit_pass(self.latent, 0, mods, final_mods, t_cos, t_sin, None if full else self.mask(), write=True)
        self.frame.add_(1)


class OasisStaticSession:
    """Frame-step API (reset / step / step_latent / decode / close) over `OasisStaticFrame`; see the module
    docstring. The same methods as OasisReferenceSession.

    model_or_path: an OasisModel or an Oasis .nfd path. The model's weights are shared, never modified (copied
        only when `device` / `dtype` differ from the model's).
    compile_mode: None (eager) or a torch.compile mode ("default", "max-autotune", "max-autotune-no-cudagraphs",
        "reduce-overhead", ...).
    compile_filling: compile the frames that fill the cache too (a second graph, masked); when False they run
        the same module eagerly (on the same buffers) and only the full-window frame is compiled.
    backend: the torch.compile backend; `compile_mode` applies to "inductor" only ("aot_eager" traces the same
        graph without code generation: the tests use it to check tracing quickly)."""

    def __init__(self, model_or_path: OasisModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32", compile_mode: str | None = None, compile_filling: bool = True,
                 backend: str = "inductor"):
        if isinstance(model_or_path, (str, os.PathLike)):
            from ..nfd_file import load

            model = load(model_or_path)
            if not isinstance(model, OasisModel):
                raise ValueError(f"{model_or_path}: not an Oasis model")
        elif isinstance(model_or_path, OasisModel):
            model = model_or_path
        else:
            raise TypeError(f"expected an OasisModel or a path to an Oasis .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda" means the current device: "cuda:N"
            self.device = torch.device("cuda", torch.cuda.current_device())
        w = model.dit.patch_embed.weight
        if w.dtype != dtypes[dtype] or w.device != self.device:
            model = copy.deepcopy(model).to(self.device, dtypes[dtype])
        self.model = model.eval()
        self.cfg: OasisConfig = model.cfg
        self.seed = _checks.seed(seed)
        self.net = OasisStaticFrame(model, self.device, dtypes[dtype], self.seed)
        self.compile_mode = compile_mode
        self.compile_filling = compile_filling
        self._compiled = None
        if compile_mode is not None:
            self._compiled = compile_frame(self.net, compile_mode, backend)
        self.frame_index = 0

    @property
    def config(self) -> OasisConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then take the given context frames (uint8 [T, H, W, 3], encoded by the ViT encoder)
        or DiT latents [T, C, h, w] as frames 0..T-1, with their actions (zeros when None): their write passes
        run eagerly."""
        net = self._net()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        z = None
        if frames is not None:
            f = _checks.frames(frames, self.cfg)
            if len(f):
                z = self.model.encode(torch.from_numpy(f).to(self.device))
        elif latents is not None:
            z = torch.from_numpy(_checks.latents(latents, self.cfg)).to(self.device, net.dtype)
        count = 0 if z is None else z.shape[0]
        a = _checks.actions(actions, count, self.cfg)
        net.frame.zero_()
        self.frame_index = 0
        for j in range(count):
            net.latent.copy_(z[j])
            net.action.copy_(torch.from_numpy(a[j]))
            net.commit(full=self.frame_index >= self.cfg.cache_frames)
            self.frame_index += 1

    @torch.no_grad()
    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        return self._step(action).cpu().numpy().copy()  # never a view of a buffer the next frame rewrites

    @torch.no_grad()
    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame (decoded too: one whole-frame graph) and return its latent (float32 [C, h, w])."""
        self._step(action)
        return self.net.latent.float().cpu().numpy().copy()

    @torch.no_grad()
    def decode(self, latent: Any) -> np.ndarray:
        """Decode one DiT latent [C, h, w] to uint8 [H, W, 3] (eagerly)."""
        net = self._net()
        z = torch.from_numpy(_checks.latents(latent, self.cfg)).to(self.device, net.dtype)
        return net.decode(z[0]).cpu().numpy()

    def close(self) -> None:
        """Drop the compiled graph and the buffers."""
        self._compiled = None
        self.net = None
        self.model = None

    def __enter__(self) -> "OasisStaticSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _net(self) -> OasisStaticFrame:
        if self.net is None:
            raise ValueError("this OasisStaticSession is closed")
        return self.net

    def _step(self, action: Any) -> torch.Tensor:
        net = self._net()
        net.action.copy_(torch.from_numpy(_checks.action(action, self.cfg)))
        full = self.frame_index >= self.cfg.cache_frames
        run = net
        if self._compiled is not None and (full or self.compile_filling):
            run = self._compiled
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # a new frame: the last frame's outputs may be reused
        frame = run(full)
        self.frame_index += 1
        return frame
