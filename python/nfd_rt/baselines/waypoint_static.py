"""WaypointStaticSession: the Waypoint frame step as its own runtimes write it; the PyTorch baseline of the benchmark.

Same weights and math as `WaypointSession` (the readable oracle), written the way world_engine and its ports run
the model:

- one preallocated K/V buffer per layer, `[1, Hkv, (slots + 1) N, hd]`: the ring's slots, then (the tail) the
  frame being denoised, rewritten in place every pass; the commit pass copies the frame's K/V into its ring slot
  when the layer keeps the frame and into the tail otherwise (world_engine's `torch.where(write_step, ring_idx,
  current_idx)`), so no pass has a data-dependent branch;
- which slots a frame sees is computed on the device from the frame index and the frame each slot holds (one
  table per layer kind: local and global), as a boolean mask for `F.scaled_dot_product_attention(...,
  enable_gqa=True)`: 16 + 1 frames for a local layer, 16 + 1 for a global one at Waypoint-1.5's sizes;
- the adaLN vectors of every layer and pass position (the sigmas, then the commit pass at 0) and the final
  layer's are computed once at construction (upstream's CachedCondHead does the same), the row/column RoPE
  angles too; the time angles come from the device frame index; Philox noise is drawn on the device
  (`nfd_rt.baselines.static.philox_normal`);
- the streaming TAEHV decoder keeps its nine memory tensors in buffers updated in place.

`compile_mode` wraps the whole frame (4 Euler passes, the commit pass, the decode) in one
`torch.compile(fullgraph=True)`; two graphs are built (the first frame after a reset primes the decoder, the
others do not) and nothing else varies between frames.
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
from ..configs_waypoint import WaypointConfig
from .static import philox_normal
from ..reference.waypoint import WaypointModel, images_to_frames, load, noise_features, rms_norm, rope_frequencies
from ._compile import compile_frame


class WaypointStaticFrame(nn.Module):
    """Weights, static buffers and the whole-frame function. Buffers change in place only."""

    def __init__(self, model: WaypointModel, device: torch.device, dtype: torch.dtype, seed: int):
        super().__init__()
        cfg: WaypointConfig = model.cfg
        self.cfg, self.seed, self.dtype = cfg, seed, dtype
        self.dit, self.decoder = model.dit, model.taehv.decoder
        N, Hkv, hd = cfg.tokens_per_frame, cfg.num_kv_heads, cfg.head_dim
        self.N = N
        for layer in range(cfg.depth):
            tokens = (cfg.cache_slots(layer) + 1) * N
            self.register_buffer(f"k_cache_{layer}", torch.zeros(1, Hkv, tokens, hd, device=device, dtype=dtype))
            self.register_buffer(f"v_cache_{layer}", torch.zeros(1, Hkv, tokens, hd, device=device, dtype=dtype))
        # The frame each ring slot holds (-1 empty), one table per layer kind (every layer of a kind fills alike).
        kinds = {cfg.is_global(i) for i in range(cfg.depth)}
        for g in kinds:
            layer = next(i for i in range(cfg.depth) if cfg.is_global(i) == g)
            self.register_buffer(f"slot_frame_{int(g)}", torch.full((cfg.cache_slots(layer),), -1, device=device,
                                                                   dtype=torch.int64))
        self.register_buffer("frame", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("controls", torch.zeros(cfg.control_dim, device=device, dtype=dtype))
        self.register_buffer("latent", torch.zeros(cfg.latent_channels, cfg.latent_height, cfg.latent_width,
                                                   device=device, dtype=dtype))
        self.register_buffer("positions", torch.arange(N, device=device))

        # RoPE: row/column angles fixed, the time part from the frame index (float64, as the reference).
        rows, cols = cfg.grid
        fxy, ft = rope_frequencies(cfg)
        r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
        c = torch.arange(cols, dtype=torch.float64).repeat(rows)
        space = torch.cat([((2 * c + 1) / cols - 1)[:, None] * fxy, ((2 * r + 1) / rows - 1)[:, None] * fxy], -1)
        self.register_buffer("rope_space_cos", torch.cos(space).to(torch.float32).to(device, dtype))
        self.register_buffer("rope_space_sin", torch.sin(space).to(torch.float32).to(device, dtype))
        self.register_buffer("rope_time_freq", (ft * cfg.time_stride).to(device))

        # adaLN vectors of every pass position: the Euler sigmas, then the commit pass at sigma 0.
        sigmas = torch.tensor(list(cfg.sigmas[:-1]) + [0.0], dtype=torch.float64)
        with torch.no_grad():
            c = self.dit.noise_embed(noise_features(sigmas, cfg.noise_features).to(device, dtype))  # [P, D]
            mods = []
            for layer in range(cfg.depth):
                attn, mlp = self.dit.modulation(c, layer)
                mods.append(torch.stack([*attn, *mlp], dim=1))  # [P, 6, D]
            self.register_buffer("mods", torch.stack(mods, dim=1))  # [P, depth, 6, D]
            self.register_buffer("final_mods", torch.stack(self.dit.final_mod(F.silu(c)).chunk(2, -1), dim=1))
        self.decoder_memory = self._memory_buffers(device, dtype)

    def _memory_buffers(self, device, dtype) -> list[torch.Tensor]:
        """The decoder's nine memory tensors (shapes from a dry run), as registered buffers."""
        cfg = self.cfg
        z = torch.zeros(1, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device, dtype=dtype)
        with torch.no_grad():
            _, mem = self.decoder.step(z, [None] * self.decoder.num_memories)
        for i, m in enumerate(mem):
            self.register_buffer(f"decoder_memory_{i}", torch.zeros_like(m))
        return [getattr(self, f"decoder_memory_{i}") for i in range(len(mem))]

    # -- pieces ---------------------------------------------------------------------------------------------
    def rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, hd/2] of the current frame."""
        ang = self.frame.to(torch.float64) * self.rope_time_freq
        tcos = torch.cos(ang).to(torch.float32).to(self.dtype).expand(self.N, -1)
        tsin = torch.sin(ang).to(torch.float32).to(self.dtype).expand(self.N, -1)
        cos = torch.cat([self.rope_space_cos, tcos], -1)[:, None]
        return cos, torch.cat([self.rope_space_sin, tsin], -1)[:, None]

    @staticmethod
    def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)

    def visible(self, g: bool) -> torch.Tensor:
        """[1, 1, 1, (slots + 1) N] bool: the slots the current frame sees in a layer of kind g, then itself."""
        cfg = self.cfg
        window = cfg.global_window if g else cfg.local_window
        held = getattr(self, f"slot_frame_{int(g)}")
        d = self.frame - held
        seen = (held >= 0) & (d > 0) & (d < window)
        tail = torch.ones(1, dtype=torch.bool, device=held.device)
        return torch.cat([seen, tail]).repeat_interleave(self.N).view(1, 1, 1, -1)

    def write_positions(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token positions the commit pass writes, the slot, whether the layer keeps the frame): the frame's
        ring slot when it keeps it, else the tail (overwritten by the next pass)."""
        cfg = self.cfg
        stride, slots = cfg.layer_stride(layer), cfg.cache_slots(layer)
        keep = self.frame % stride == 0
        slot = torch.div(self.frame, stride, rounding_mode="floor") % slots
        where = torch.where(keep, slot, torch.full_like(slot, slots))
        return where * self.N + self.positions, slot, keep

    def dit_pass(self, x: torch.Tensor, p: int, cos, sin, masks, fuse_c, commit: bool) -> torch.Tensor | None:
        """One pass of the current latent x [C, h, w] at pass position p; with `commit`, every layer's K/V go to
        their place and the pass stops after the last layer's."""
        cfg, N, dit = self.cfg, self.N, self.dit
        D, Hq, Hkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        tail = [cfg.cache_slots(i) * N + self.positions for i in range(cfg.depth)]
        h = dit.patch_embed(dit.patchify(x[None, None])[0])  # [1, N, D]
        v0 = None
        for layer, blk in enumerate(dit.blocks):
            s1, b1, g1, s2, b2, g2 = self.mods[p, layer].unbind(0)
            q, k, v = blk.qkv(rms_norm(h) * (1 + s1) + b1).split([Hq * hd, Hkv * hd, Hkv * hd], dim=-1)
            q, k, v = q.view(1, N, Hq, hd), k.view(1, N, Hkv, hd), v.view(1, N, Hkv, hd)
            if v0 is None:
                v0 = v
            elif cfg.value_residual:
                v = v + blk.v_mix * (v0 - v)
            q = self.apply_rope(rms_norm(q), cos, sin).transpose(1, 2)  # [1, H, N, hd]
            k = self.apply_rope(rms_norm(k), cos, sin).transpose(1, 2)
            v = v.transpose(1, 2)
            kc, vc = getattr(self, f"k_cache_{layer}"), getattr(self, f"v_cache_{layer}")
            kc.index_copy_(2, tail[layer], k)
            vc.index_copy_(2, tail[layer], v)
            if commit and layer == cfg.depth - 1:  # the last layer's K/V are all the commit pass still needs
                pos = self.write_positions(layer)[0]
                kc.index_copy_(2, pos, k)
                vc.index_copy_(2, pos, v)
                return None
            a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=masks[cfg.is_global(layer)], enable_gqa=True)
            if commit:
                pos = self.write_positions(layer)[0]
                kc.index_copy_(2, pos, k)
                vc.index_copy_(2, pos, v)
            h = h + g1 * blk.out(a.transpose(1, 2).reshape(1, N, D))
            if cfg.has_control_fusion(layer):
                h = h + blk.fusion_out(F.silu(blk.fusion_x(rms_norm(h)) + fuse_c[layer]))
            h = h + g2 * blk.fc2(F.silu(blk.fc1(rms_norm(h) * (1 + s2) + b2)))
        scale, shift = self.final_mods[p].unbind(0)
        out = dit.final(F.silu(rms_norm(h) * (1 + scale) + shift))
        return dit.unpatchify(out[None])[0, 0]

    def decode_step(self, z: torch.Tensor) -> torch.Tensor:
        """The streaming decoder on this frame's latent, memory updated in place: [F, 3, H, W] in [0, 1]."""
        images, mem = self.decoder.step(z[None], self.decoder_memory)
        for buf, m in zip(self.decoder_memory, mem):
            buf.copy_(m)
        return images[0]

    def commit_rings(self) -> None:
        cfg = self.cfg
        for g in {cfg.is_global(i) for i in range(cfg.depth)}:
            layer = next(i for i in range(cfg.depth) if cfg.is_global(i) == g)
            _, slot, keep = self.write_positions(layer)
            held = getattr(self, f"slot_frame_{int(g)}")
            here = (torch.arange(held.shape[0], device=held.device) == slot) & keep
            held.copy_(torch.where(here, self.frame, held))

    def forward(self, prime: bool) -> torch.Tensor:
        """The whole frame for `self.controls`: uint8 [F, Ho, Wo, 3] on the device. `prime`: the first frame
        after a reset (the decoder state is fresh: the latent first runs F - 1 times unseen, as upstream)."""
        cfg = self.cfg
        cos, sin = self.rope()
        masks = {g: self.visible(g) for g in {cfg.is_global(i) for i in range(cfg.depth)}}
        e = rms_norm(self.dit.control_embed(self.controls))
        fuse_c = {i: self.dit.blocks[i].fusion_c(e) for i in cfg.control_layers}
        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        x = philox_normal(self.seed, self.frame, 0, math.prod(shape), self.frame.device).reshape(shape)
        x = x.to(self.dtype)
        sig = cfg.sigmas
        for k in range(cfg.num_steps):
            x = x + (sig[k + 1] - sig[k]) * self.dit_pass(x, k, cos, sin, masks, fuse_c, commit=False)
        self.latent.copy_(x)
        self.dit_pass(x, cfg.num_steps, cos, sin, masks, fuse_c, commit=True)
        self.commit_rings()
        self.frame.add_(1)
        if prime:
            for _ in range(cfg.frames_per_latent - 1):
                self.decode_step(x)
        return images_to_frames(cfg, self.decode_step(x))


class WaypointStaticSession:
    """Frame-step API (reset / step / step_latent) over `WaypointStaticFrame`; see the module docstring.

    model_or_path: a WaypointModel (deep-copied: this session owns its weights) or a Waypoint .nfd path.
    compile_mode: None (eager) or a torch.compile mode ("default", "reduce-overhead", "max-autotune", ...);
    backend: the torch.compile backend ("aot_eager" traces without code generation: the tests' quick check)."""

    def __init__(self, model_or_path: WaypointModel | str | os.PathLike, device: str = "cpu", seed: int = 0,
                 dtype: str = "float32", compile_mode: str | None = None, backend: str = "inductor"):
        if isinstance(model_or_path, (str, os.PathLike)):
            model = load(model_or_path)
        elif isinstance(model_or_path, WaypointModel):
            model = copy.deepcopy(model_or_path)
        else:
            raise TypeError(f"expected a WaypointModel or a path to a .nfd file, got {type(model_or_path).__name__}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
        self.device = torch.device(device)
        self.cfg: WaypointConfig = model.cfg
        self.seed = _checks.seed(seed)
        model = model.to(self.device, dtypes[dtype]).eval().requires_grad_(False)
        self.net = WaypointStaticFrame(model, self.device, dtypes[dtype], self.seed)
        self._run = self.net
        if compile_mode is not None:
            self._run = compile_frame(self.net, compile_mode, backend)
        self._host_controls = torch.zeros(self.cfg.control_dim, dtype=torch.float32,
                                          pin_memory=self.device.type == "cuda")
        self.frame_index = 0

    @property
    def config(self) -> WaypointConfig:
        return self.cfg

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every frame and the decoder state (no context: this session is a benchmark baseline)."""
        net = self.net
        net.frame.zero_()
        for name, b in net.named_buffers():
            if name.startswith("slot_frame_"):
                b.fill_(-1)
            elif name.startswith("decoder_memory_"):
                b.zero_()
        self.frame_index = 0

    @torch.no_grad()
    def step(self, controls: Any) -> np.ndarray:
        """Generate and decode the next latent frame: uint8 [F, Ho, Wo, 3]."""
        return self._step(controls).cpu().numpy()

    @torch.no_grad()
    def step_latent(self, controls: Any) -> np.ndarray:
        """Generate the next frame (decoded too: one whole-frame graph) and return its latent (float32 [C, h, w])."""
        self._step(controls)
        return self.net.latent.float().cpu().numpy().copy()  # on the CPU in float32 a view of the buffer

    def _step(self, controls: Any) -> torch.Tensor:
        self._host_controls.copy_(torch.from_numpy(_checks.action(controls, self.cfg)))
        self.net.controls.copy_(self._host_controls, non_blocking=True)
        if self.device.type == "cuda" and self._run is not self.net:
            torch.compiler.cudagraph_mark_step_begin()
        frames = self._run(self.frame_index == 0)
        self.frame_index += 1
        return frames
