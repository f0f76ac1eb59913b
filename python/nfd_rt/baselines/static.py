"""StaticSession: the frame step as a skilled PyTorch user would write it; the strong baseline of benchmarks/fps.py.

Same weights and the same math as `ReferenceSession` (which stays the plain, readable oracle), written for speed:

- one pre-allocated 4-D KV cache per layer, `[1, H, (1 + slots) * N, hd]`: tokens 0..N-1 hold the K/V of the
  frame being denoised (rewritten in place every pass), cache slot s holds tokens (1 + s) N .. (2 + s) N - 1;
  the cache-write pass copies its K/V into the frame's ring slot in place (`index_copy_`, slot computed on the
  device);
- `F.scaled_dot_product_attention` on 4-D inputs, so PyTorch dispatches to its fused kernels (flash / cuDNN /
  memory-efficient on CUDA, the flash kernel on CPU). With a full cache every position is visible and no mask
  is passed; while the cache fills, a boolean mask (built on the device from the frame index) hides empty slots;
- RoPE: the row/column angle tables are precomputed on the device, the time angles computed there from the
  frame index (float64, as the reference); the time embeddings of every pass position are precomputed, and
  the adaLN vectors of all passes of a layer come from one GEMM per frame;
- Philox4x32-10 noise (docs/rng.md) generated on the device with integer tensor ops;
- nothing synchronises the host but the copy of the finished frame.

`compile_mode` wraps the whole frame (all denoising passes, the cache-write pass and the decode) in one
`torch.compile(fullgraph=True)` call; `mode="max-autotune"` adds Inductor's GEMM autotuning and, on CUDA, CUDA
graphs. Two graphs are compiled: one while the cache fills (masked) and one at a full cache; nothing else varies
between frames (frame index, slot and action live in device buffers), so frames never recompile.
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

from .. import _checks, ring
from ..configs import NFDConfig
from ..reference.model import NFDModel, images_to_frames, modulate, timestep_features
from ._compile import compile_frame

# ---------------------------------------------------------------------------------------------------------------
# Philox4x32-10 and Box-Muller on device tensors (the stream of nfd_rt.rng, docs/rng.md)

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * m for int64 tensors a < 2**32 and a constant m < 2**32.

    The 64-bit product does not fit an int64, so m is split into 16-bit halves: each partial product stays
    below 2**48."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)  # a * m = p_hi * 2**16 + p_lo
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox_normal(seed: int, frame: torch.Tensor, step: int, count: int, device: torch.device) -> torch.Tensor:
    """float32 [count]: rng.normal(seed, frame, step, count) computed on `device`; `frame` is an int64 tensor
    (a scalar on the device), so the same code serves every frame without a host round trip."""
    groups = (count + 3) // 4
    c0 = torch.arange(groups, dtype=torch.int64, device=device)
    c1 = frame.to(torch.int64).expand(groups)
    c2 = torch.full((groups,), step, dtype=torch.int64, device=device)
    c3 = torch.zeros(groups, dtype=torch.int64, device=device)
    k0, k1 = seed & _MASK32, seed >> 32
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0

    def box_muller(a, b):
        u1 = ((a >> 8).to(torch.float64) + 1.0) * (1.0 / 16777216.0)
        u2 = (b >> 8).to(torch.float64) * (1.0 / 16777216.0)
        r = torch.sqrt(-2.0 * torch.log(u1))
        angle = (2.0 * math.pi) * u2
        return (r * torch.cos(angle)).to(torch.float32), (r * torch.sin(angle)).to(torch.float32)

    z0, z1 = box_muller(c0, c1)
    z2, z3 = box_muller(c2, c3)
    return torch.stack([z0, z1, z2, z3], dim=-1).reshape(-1)[:count]


# ---------------------------------------------------------------------------------------------------------------
# The frame


class StaticFrame(nn.Module):
    """Weights, static buffers and the whole-frame function. Buffers change in place only."""

    def __init__(self, model: NFDModel, device: torch.device, dtype: torch.dtype, seed: int):
        super().__init__()
        cfg: NFDConfig = model.cfg
        self.cfg, self.seed, self.dtype = cfg, seed, dtype
        self.dit = model.dit
        self.decoder = model.vae.decoder
        N, H, hd = cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim
        self.N, self.slots = N, cfg.cache_frames
        tokens = (1 + self.slots) * N
        # One buffer per layer and K/V (as gpt-fast's KVCache): in-place updates of a whole buffer, never of a
        # view, are what Inductor turns into in-place kernels.
        for layer in range(cfg.depth):
            self.register_buffer(f"k_cache_{layer}", torch.zeros(1, H, tokens, hd, device=device, dtype=dtype))
            self.register_buffer(f"v_cache_{layer}", torch.zeros(1, H, tokens, hd, device=device, dtype=dtype))
        self.register_buffer("frame", torch.zeros((), dtype=torch.int64, device=device))  # frame being generated
        self.register_buffer("action", torch.zeros(cfg.action_dim, device=device, dtype=dtype))
        self.register_buffer("latent", torch.zeros(cfg.latent_channels, cfg.latent_height, cfg.latent_width,
                                                   device=device, dtype=dtype))  # the last frame's latent

        # RoPE (reference.model.rope_angles): pairs [time | row | col]; the row/col angles are fixed.
        rows, cols = cfg.grid
        dt, dh, dw = cfg.rope_dims

        def inv_freq(d):
            return cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)

        r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
        c = torch.arange(cols, dtype=torch.float64).repeat(rows)
        space = torch.cat([r[:, None] * inv_freq(dh)[None], c[:, None] * inv_freq(dw)[None]], dim=-1)
        self.register_buffer("rope_space_cos", torch.cos(space).to(torch.float32).to(device, dtype))
        self.register_buffer("rope_space_sin", torch.sin(space).to(torch.float32).to(device, dtype))
        self.register_buffer("rope_time_freq", inv_freq(dt).to(device))

        # Time embeddings of the pass positions (steps, then the cache write); t rounded to the model dtype as
        # ReferenceSession does.
        ts = list(cfg.schedule) + [cfg.context_noise]
        t = torch.tensor(ts, dtype=torch.float32).to(dtype).to(device)
        with torch.no_grad():
            temb = self.dit.time_embed(timestep_features(t, cfg.time_embed_dim).to(dtype))
        self.register_buffer("temb", temb)  # [passes, D]
        self.register_buffer("positions", torch.arange(N, device=device))
        self.register_buffer("slot_index", torch.arange(self.slots, device=device))

    # -- pieces ---------------------------------------------------------------------------------------------
    def noise(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        z = philox_normal(self.seed, self.frame, step, math.prod(shape), self.frame.device)
        return z.reshape(shape).to(self.dtype)

    def rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, hd/2] of the current frame (the time part from the device frame index)."""
        ang = self.frame.to(torch.float64) * self.rope_time_freq  # [dt/2]
        tcos = torch.cos(ang).to(torch.float32).to(self.dtype).expand(self.N, -1)
        tsin = torch.sin(ang).to(torch.float32).to(self.dtype).expand(self.N, -1)
        cos = torch.cat([tcos, self.rope_space_cos], dim=-1)[:, None, :]
        sin = torch.cat([tsin, self.rope_space_sin], dim=-1)[:, None, :]
        return cos, sin

    @staticmethod
    def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)

    def mask(self) -> torch.Tensor:
        """[1, 1, 1, (1 + slots) N] bool while the cache fills: the current frame and the slots written so far
        (frames 0 .. f-1 fill slots 0 .. f-1, all visible under the sink + window rule)."""
        held = torch.cat([torch.ones(1, dtype=torch.bool, device=self.frame.device), self.slot_index < self.frame])
        return held.repeat_interleave(self.N).view(1, 1, 1, -1)

    def write_positions(self) -> torch.Tensor:
        """Token positions of the current frame's ring slot: sinks first, then a ring over the window."""
        cfg = self.cfg
        slot = ring.slot_for(self.frame, cfg.sink_frames, cfg.window)  # window 0: only called for sink frames
        return (1 + slot) * self.N + self.positions

    def dit_pass(self, x: torch.Tensor, mods: list[torch.Tensor], final_mod: torch.Tensor | None, cos, sin,
                 mask: torch.Tensor | None, write: bool) -> torch.Tensor | None:
        """One DiT pass of the current latent x [C, h, w]. mods[l]: the layer's adaLN vector [6D] of this pass.
        With `write`, each layer's K/V go to the frame's ring slot and the pass stops after the last K/V."""
        cfg, N = self.cfg, self.N
        D, H, hd, eps = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.norm_eps
        h = self.dit.patch_embed(self.dit.patchify(x[None, None])[0])  # [1, N, D]
        if write:
            pos = self.write_positions()
        for layer, block in enumerate(self.dit.blocks):
            shift1, scale1, gate1, shift2, scale2, gate2 = mods[layer].chunk(6, dim=-1)
            qkv = block.qkv(modulate(h, shift1, scale1, eps)).view(1, N, 3, H, hd)
            q, k, v = qkv.unbind(2)  # [1, N, H, hd]
            q = self.apply_rope(q, cos, sin).transpose(1, 2)  # [1, H, N, hd]
            k = self.apply_rope(k, cos, sin).transpose(1, 2)
            v = v.transpose(1, 2)
            kc, vc = getattr(self, f"k_cache_{layer}"), getattr(self, f"v_cache_{layer}")  # [1, H, (1+slots) N, hd]
            if write and layer == cfg.depth - 1:  # the last layer's K/V are all the write pass still needs
                kc.index_copy_(2, pos, k)
                vc.index_copy_(2, pos, v)
                return None
            kc.index_copy_(2, self.positions, k)  # the current frame: tokens 0 .. N-1
            vc.index_copy_(2, self.positions, v)
            a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)  # [1, H, N, hd]
            if write:  # after the attention: the slot still held a visible frame for it
                kc.index_copy_(2, pos, k)
                vc.index_copy_(2, pos, v)
            h = h + gate1 * block.proj(a.transpose(1, 2).reshape(1, N, D))
            mlp = block.fc2(F.gelu(block.fc1(modulate(h, shift2, scale2, eps)), approximate="tanh"))
            h = h + gate2 * mlp
        shift, scale = final_mod.chunk(2, dim=-1)
        out = self.dit.final.linear(modulate(h, shift, scale, eps))  # [1, N, C p p]
        return self.dit.unpatchify(out[None])[0, 0]

    def forward(self, full: bool) -> torch.Tensor:
        """The whole frame for the action in `self.action`: uint8 [H, W, 3] on the device. `full`: every cache
        slot holds a visible frame (no mask)."""
        cfg = self.cfg
        mask = None if full else self.mask()
        cos, sin = self.rope()
        c = F.silu(self.temb + self.dit.action_embed(self.action)[None])  # [passes, D]
        mods = [block.adaln(c)[:, None, :] for block in self.dit.blocks]  # [passes, 1, 6D] per layer
        final = self.dit.final.adaln(c)[:, None, :]
        sched = list(cfg.schedule) + [0.0]
        x = self.noise(0)
        for k in range(cfg.num_steps):
            v = self.dit_pass(x, [m[k] for m in mods], final[k], cos, sin, mask, write=False)
            x = x + (sched[k + 1] - sched[k]) * v
        self.latent.copy_(x)
        if cfg.window > 0 or not full:  # with no window, frames after the sinks are never cached
            p = cfg.num_steps
            xc = (1.0 - cfg.context_noise) * x + cfg.context_noise * self.noise(p)
            self.dit_pass(xc, [m[p] for m in mods], None, cos, sin, mask, write=True)
        self.frame.add_(1)
        return images_to_frames(self.decoder(x[None]))[0]


class StaticSession:
    """Frame-step API (reset / step / step_latent) over `StaticFrame`; see the module docstring.

    model_or_path: an NFDModel (deep-copied: this session owns its weights) or a .nfd path.
    compile_mode: None (eager) or a torch.compile mode ("default", "reduce-overhead", "max-autotune", ...).
    compile_filling: compile the frames that fill the cache too (a second graph, masked); when False they run
        the same module eagerly (on the same buffers) and only the full-cache frame is compiled.
    backend: the torch.compile backend; `compile_mode` applies to "inductor" only ("aot_eager" traces the same
        graph without code generation: the tests use it to check tracing quickly)."""

    def __init__(self, model_or_path: NFDModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32", compile_mode: str | None = None, compile_filling: bool = True,
                 backend: str = "inductor"):
        if isinstance(model_or_path, (str, os.PathLike)):
            from ..nfd_file import load

            model = load(model_or_path)
        elif isinstance(model_or_path, NFDModel):
            model = copy.deepcopy(model_or_path)
        else:
            raise TypeError(f"expected an NFDModel or a path to a .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        self.device = torch.device(device)
        self.cfg: NFDConfig = model.cfg
        self.seed = _checks.seed(seed)
        model = model.to(self.device, dtypes[dtype]).eval().requires_grad_(False)
        self.net = StaticFrame(model, self.device, dtypes[dtype], self.seed)
        self.compile_mode = compile_mode
        self.compile_filling = compile_filling
        self._compiled = None
        if compile_mode is not None:
            self._compiled = compile_frame(self.net, compile_mode, backend)
        self._host_action = torch.zeros(self.cfg.action_dim, dtype=torch.float32,
                                        pin_memory=self.device.type == "cuda")
        self.frame_index = 0

    @property
    def config(self) -> NFDConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget every frame. Context frames are not supported: this session is a benchmark baseline."""
        if frames is not None or latents is not None or actions is not None:
            raise ValueError("StaticSession.reset takes no context frames, latents or actions (a benchmark baseline "
                             "starts from an empty cache); use nfd_rt.Session for a prompt")
        self.net.frame.zero_()
        self.frame_index = 0

    @torch.no_grad()
    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        return self._step(action).cpu().numpy().copy()  # never a view of a buffer the next frame rewrites

    @torch.no_grad()
    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame (decoded too: one whole-frame graph) and return its latent (float32 [C, h, w])."""
        self._step(action)
        # A copy: on the CPU .float().cpu().numpy() of the float32 buffer would be a view the next frame rewrites.
        return self.net.latent.float().cpu().numpy().copy()

    def close(self) -> None:
        """Drop the compiled graph and the buffers (the frame-step API's close; nothing else is held)."""
        self._compiled = None
        self.net = None

    def __enter__(self) -> "StaticSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _step(self, action: Any) -> torch.Tensor:
        if self.net is None:
            raise ValueError("this StaticSession is closed")
        self._host_action.copy_(torch.from_numpy(_checks.action(action, self.cfg)))
        self.net.action.copy_(self._host_action, non_blocking=True)
        full = self.frame_index >= self.cfg.cache_frames
        run = self.net
        if self._compiled is not None and (full or self.compile_filling):
            run = self._compiled
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # a new frame: the last frame's outputs may be reused
        frame = run(full)
        self.frame_index += 1
        return frame
