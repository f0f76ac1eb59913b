"""ONNX export of what nfd_rt runs (needs torch): one DiT pass of one frame against the KV cache, the VAE
decoder (and encoder, for `reset(frames)`), and a JSON spec of the host loop. See docs/onnx.md.

The graphs are traced from the PyTorch reference model (`nfd_rt.reference`), the same modules that are the
parity oracle for the C++ runtime, wrapped so that everything a host must keep between passes is an explicit
input: the KV cache (fixed size, one graph for every fill level), the number of valid cache frames, the
timestep, the action and the frame's RoPE time angles.

Two things are computed by the host, in float64, and fed as float32 inputs, because float32 inside a graph
cannot hold them to the reference's precision (and TensorRT has no float64): the sinusoidal timestep
features (angles up to t * 1000 rad) and the cos/sin of the RoPE time part (angles grow with the frame index
without bound). `nfd_rt.onnx_runtime.timestep_features` and `nfd_rt.onnx_runtime.rope_time` compute them; the JSON states the
formulas.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .configs import NFDConfig
from .reference.model import NFDModel, frames_to_images, images_to_frames, rope_angles

SPEC_FORMAT = "nfd_rt-onnx"
SPEC_VERSION = 1
SPEC_NAME = "nfd_onnx.json"
DEFAULT_OPSET = 17
# 17: LayerNormalization is a single op (TensorRT >= 8.6 and every current ONNX Runtime take it). Older opsets
# would need it decomposed; the TorchScript exporter this module uses goes up to 20.
SUPPORTED_OPSETS = range(17, 21)
MAX_PROTO_BYTES = 2**31 - 2**24  # one ONNX protobuf file is limited to 2 GiB; keep headroom for the graph


class DiTPass(nn.Module):
    """One DiT pass of one frame per batch element against that element's KV cache.

    Inputs (B = batch, S = cache slots = sink_frames + window, N = tokens per frame, H = heads, hd = head_dim):
      latent           float32 [B, C, h, w]      the pass input x_t
      t_features       float32 [B, time_embed_dim]  sinusoidal features of the timestep (host, float64 angles)
      action           float32 [B, action_dim]
      rope_cos/sin     float32 [B, dt/2]          cos/sin of the RoPE time angles of this frame (host)
      k_cache, v_cache float32 [B, depth, H, S, N, hd]  post-RoPE keys / values of the cached frames
      valid_frames     int64   [B]               slots 0 .. valid_frames-1 hold frames; the rest are ignored
    Outputs:
      velocity         float32 [B, C, h, w]
      k_new, v_new     float32 [B, depth, H, N, hd]  this frame's keys (post-RoPE) and values, every layer
    """

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        cfg: NFDConfig = dit.cfg
        half_t = cfg.rope_dims[0] // 2
        # The row/column RoPE parts depend only on the token's place in the grid: constants, float64 angles as
        # in rope_angles. Frame 0 gives them without the time part, which comes from the inputs.
        cos, sin = rope_angles(cfg, torch.zeros(1, dtype=torch.int64))
        self.register_buffer("hw_cos", cos[0, :, half_t:].clone(), persistent=False)
        self.register_buffer("hw_sin", sin[0, :, half_t:].clone(), persistent=False)

    def forward(self, latent, t_features, action, rope_cos, rope_sin, k_cache, v_cache, valid_frames):
        dit, cfg = self.dit, self.dit.cfg
        N, S, hd = cfg.tokens_per_frame, cfg.cache_frames, cfg.head_dim
        batch = latent.shape[0]
        # The reference's [batch, frames, ...] layout with the batch elements as the frames of one clip: every
        # op but attention works frame by frame, and attention below keeps each element to its own cache.
        cos = torch.cat([rope_cos[:, None, :].expand(-1, N, -1), self.hw_cos[None].expand(batch, -1, -1)], -1)
        sin = torch.cat([rope_sin[:, None, :].expand(-1, N, -1), self.hw_sin[None].expand(batch, -1, -1)], -1)
        temb = dit.time_embed(t_features)
        c = F.silu(temb + dit.action_embed(action))[None]  # [1, B, D]
        x = dit.patch_embed(dit.patchify(latent[None]))  # [1, B, N, D]

        slot_ok = torch.arange(S, device=latent.device)[None, :] < valid_frames[:, None]  # [B, S]
        key_ok = slot_ok[:, :, None].expand(-1, -1, N).flatten(1)  # [B, S*N]
        key_ok = torch.cat([key_ok, torch.ones_like(key_ok[:, :N])], 1)[:, None, None, :]  # + the frame itself
        scale = 1.0 / math.sqrt(hd)
        new_k, new_v = [], []

        def attend(layer, q, k, v):  # q, k, v: [1, B, N, H, hd]
            q, k, v = (a[0].transpose(1, 2) for a in (q, k, v))  # [B, H, N, hd]
            keys = torch.cat([k_cache[:, layer].flatten(2, 3), k], 2)  # [B, H, (S+1) N, hd]
            vals = torch.cat([v_cache[:, layer].flatten(2, 3), v], 2)
            scores = (q * scale) @ keys.transpose(-1, -2)
            scores = scores.masked_fill(~key_ok, float("-inf"))
            out = torch.softmax(scores, dim=-1) @ vals  # [B, H, N, hd]
            new_k.append(k)
            new_v.append(v)
            return out.transpose(1, 2)[None]

        for layer, block in enumerate(dit.blocks):
            x, _, _ = block(x, c, cos, sin, lambda q, k, v, layer=layer: attend(layer, q, k, v))
        velocity = dit.unpatchify(dit.final(x, c))[0]
        return velocity, torch.stack(new_k, 1), torch.stack(new_v, 1)


class Decoder(nn.Module):
    """latent float32 [B, C, h, w] -> uint8 frames [B, H, W, 3] (or float32 images [B, 3, H, W] in [-1, 1])."""

    def __init__(self, decoder: nn.Module, uint8: bool):
        super().__init__()
        self.decoder = decoder
        self.uint8 = uint8

    def forward(self, latent):
        images = self.decoder(latent)
        return images_to_frames(images) if self.uint8 else images


class Encoder(nn.Module):
    """uint8 frames [B, H, W, 3] -> latent float32 [B, C, h, w] (what `reset(frames)` writes to the cache)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames):
        return self.encoder(frames_to_images(frames))


def check_exportable(cfg: NFDConfig, opset: int) -> None:
    """Raise ValueError naming what this exporter cannot express."""
    problems = []
    if opset not in SUPPORTED_OPSETS:
        problems.append(f"opset {opset} is not supported (use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1})")
    if cfg.cache_frames < 1:
        problems.append("sink_frames + window is 0: a model without a KV cache has no cache inputs to export "
                        "(the dit_pass graph needs at least one cache slot)")
    dit_bytes = 4 * _dit_params(cfg)
    if dit_bytes > MAX_PROTO_BYTES:
        problems.append(f"the DiT's float32 weights ({dit_bytes / 2**30:.2f} GiB) do not fit in one ONNX file "
                        "(2 GiB protobuf limit); external-data export is not implemented")
    if problems:
        raise ValueError(f"cannot export {cfg.name!r} to ONNX: " + "; ".join(problems))


def _dit_params(cfg: NFDConfig) -> int:
    D, L, F_ = cfg.hidden_size, cfg.depth, cfg.mlp_ratio * cfg.hidden_size
    block = 6 * D * D + 6 * D + 3 * D * D + 3 * D + D * D + D + 2 * D * F_ + F_ + D
    embeds = cfg.patch_dim * D + D + cfg.time_embed_dim * D + D + D * D + D + cfg.action_dim * D + D + D * D + D
    final = 2 * D * D + 2 * D + D * cfg.patch_dim + cfg.patch_dim
    return L * block + embeds + final


def _io(name: str, dtype: str, shape: list) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def graph_io(cfg: NFDConfig, vae_output: str, batch: int | None = None) -> dict:
    """Names, dtypes and shapes of every graph's inputs and outputs ("batch": the dynamic axis, unless fixed)."""
    C, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    H, S, N, hd, L = cfg.num_heads, cfg.cache_frames, cfg.tokens_per_frame, cfg.head_dim, cfg.depth
    b = "batch" if batch is None else int(batch)
    frame_out = (_io("frame", "uint8", [b, cfg.frame_height, cfg.frame_width, 3]) if vae_output == "uint8"
                 else _io("image", "float32", [b, 3, cfg.frame_height, cfg.frame_width]))
    return {
        "dit_pass": {
            "inputs": [
                _io("latent", "float32", [b, C, h, w]),
                _io("t_features", "float32", [b, cfg.time_embed_dim]),
                _io("action", "float32", [b, cfg.action_dim]),
                _io("rope_cos", "float32", [b, cfg.rope_dims[0] // 2]),
                _io("rope_sin", "float32", [b, cfg.rope_dims[0] // 2]),
                _io("k_cache", "float32", [b, L, H, S, N, hd]),
                _io("v_cache", "float32", [b, L, H, S, N, hd]),
                _io("valid_frames", "int64", [b]),
            ],
            "outputs": [
                _io("velocity", "float32", [b, C, h, w]),
                _io("k_new", "float32", [b, L, H, N, hd]),
                _io("v_new", "float32", [b, L, H, N, hd]),
            ],
        },
        "vae_decoder": {"inputs": [_io("latent", "float32", [b, C, h, w])], "outputs": [frame_out]},
        "vae_encoder": {"inputs": [_io("frames", "uint8", [b, cfg.frame_height, cfg.frame_width, 3])],
                        "outputs": [_io("latent", "float32", [b, C, h, w])]},
    }


def spec(cfg: NFDConfig, opset: int, vae_output: str, files: dict, graphs: dict) -> dict:
    """The JSON written beside the graphs: everything a host needs to run whole frames."""
    S, W = cfg.sink_frames, cfg.window
    dynamic = graphs["dit_pass"]["inputs"][0]["shape"][0] == "batch"
    return {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "opset": opset,
        "dynamic_axes": ({"batch": "every input and output's first axis: independent worlds, each with its own "
                                   "cache, timestep, action, frame index and valid_frames"} if dynamic else {}),
        "files": files,
        "config": cfg.to_dict(),
        "graphs": graphs,
        "sampler": {
            "schedule": list(cfg.schedule),
            "num_steps": cfg.num_steps,
            "context_noise": cfg.context_noise,
            "passes_per_frame": cfg.num_steps + 1,
            "euler": "x += (t[k+1] - t[k]) * velocity, with t = schedule + [0.0]",
        },
        "timestep_features": {
            "dim": cfg.time_embed_dim,
            "formula": "half = dim/2; f_i = exp(-ln(10000) i / half); a_i = float64(float32(t)) * 1000 * f_i; "
                       "features = [cos(a_0..a_{half-1}), sin(a_0..a_{half-1})], in float64, cast to float32",
        },
        "rope_time": {
            "dims": cfg.rope_dims[0],
            "theta": cfg.rope_theta,
            "formula": "a_j = frame_index * theta^(-2j / dims), j = 0 .. dims/2 - 1, in float64; "
                       "rope_cos = cos(a), rope_sin = sin(a) cast to float32 (frame_index: absolute, from 0)",
        },
        "cache": {
            "slots": cfg.cache_frames,
            "sink_frames": S,
            "window": W,
            "layout": "[batch, depth, heads, slot, token, head_dim]; keys after RoPE",
            "slot_of_frame": (f"frame f < {S}: slot f; else " + (f"{S} + (f - {S}) % {W}" if W else
                                                                   "not cached (window 0)")),
            "valid_frames": (f"min(frame_index, {cfg.cache_frames})" if W else f"min(frame_index, {S})"),
            "note": "filled slots are always the prefix 0 .. valid_frames-1, and every filled slot is visible to "
                    "the next frame (the ring holds exactly the last `window` frames)",
        },
        "noise": {
            "generator": "Philox4x32-10 (docs/rng.md; nfd_rt.rng.latent_noise(seed, frame, slot, shape))",
            "initial": "x = noise(seed, frame_index, 0)",
            "cache_write": f"x_ctx = (1 - {cfg.context_noise}) * x + {cfg.context_noise} * "
                           f"noise(seed, frame_index, {cfg.num_steps})",
        },
        "host_loop": [
            "i = frame_index; valid = min(i, slots) (or min(i, sink_frames) when window = 0)",
            "x = noise(seed, i, 0)",
            "for k in 0 .. num_steps-1: velocity = dit_pass(latent=x, t_features=features(schedule[k]), action, "
            "rope(i), k_cache, v_cache, valid); x += (t[k+1] - t[k]) * velocity",
            "x_ctx = (1 - context_noise) x + context_noise noise(seed, i, num_steps); "
            "(_, k_new, v_new) = dit_pass(latent=x_ctx, t_features=features(context_noise), action, rope(i), "
            "k_cache, v_cache, valid)",
            "slot = slot_of_frame(i); if any: k_cache[:, :, :, slot] = k_new; v_cache[:, :, :, slot] = v_new",
            "frame = vae_decoder(x); frame_index = i + 1",
            "reset(frames): frame_index = 0, valid = 0; for each context frame: x = vae_encoder(frame), then its "
            "cache-write pass as above (with the frame's action, zeros when none), frame_index += 1",
        ],
        "vae_output": ("uint8 [batch, H, W, 3] = clamp(floor((x + 1) * 127.5 + 0.5), 0, 255)"
                       if vae_output == "uint8" else "float32 [batch, 3, H, W] in [-1, 1]"),
    }


def _export(module: nn.Module, args: tuple, path: Path, io: dict, opset: int) -> None:
    names_in = [i["name"] for i in io["inputs"]]
    names_out = [o["name"] for o in io["outputs"]]
    dynamic = {n: {0: "batch"} for n in names_in + names_out} if io["inputs"][0]["shape"][0] == "batch" else None
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo=True, which needs onnxscript
        # and exports opset >= 18 only; this one gives plain opset-17 graphs that TensorRT's parser takes.
        warnings.simplefilter("ignore")
        kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, **kw)
    _finish(path, io)


def _finish(path: Path, io: dict) -> None:
    """State every static output dimension (the tracer leaves some symbolic), name the model, check the file."""
    import onnx

    m = onnx.load(str(path))
    for out in m.graph.output:
        want = next(o for o in io["outputs"] if o["name"] == out.name)["shape"]
        dims = out.type.tensor_type.shape.dim
        for d, w in zip(dims, want):
            if isinstance(w, int):
                d.Clear()
                d.dim_value = w
            else:
                d.Clear()
                d.dim_param = w
    m.producer_name = "nfd_rt"
    m.doc_string = f"nfd_rt {path.stem}: see nfd_onnx.json beside this file and docs/onnx.md"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def to_onnx(model_or_path, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET, vae_output: str = "uint8",
            encoder: bool = True, batch: int | None = None) -> dict:
    """Export `model_or_path` (an NFDModel or a .nfd file) to `out_dir`; returns the spec written beside.

    Writes dit_pass.onnx, vae_decoder.onnx, vae_encoder.onnx (unless encoder=False) and nfd_onnx.json.
    batch=None: a dynamic batch axis; an int fixes it (every shape static: ONNX Runtime then folds the
    shape arithmetic away, which matters for small models).
    """
    if vae_output not in ("uint8", "float32"):
        raise ValueError(f"vae_output must be 'uint8' or 'float32', got {vae_output!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be None (dynamic) or an int >= 1, got {batch!r}")
    if isinstance(model_or_path, NFDModel):
        model = model_or_path
    elif isinstance(model_or_path, (str, os.PathLike)):
        from .nfd_file import load

        model = load(model_or_path)
    else:
        raise TypeError(f"expected an NFDModel or a path to a .nfd file, got {type(model_or_path).__name__}")
    cfg = model.cfg
    check_exportable(cfg, int(opset))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", torch.float32).eval()
    io = graph_io(cfg, vae_output, batch)

    # Example inputs: batch 1 (tracing runs the model once: at nfd-130m sizes batch 2 doubles a long export;
    # tests run the graphs at batch 2, so no axis is specialised to 1) and a partly filled cache.
    B, C, h, w = batch or 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width
    g = torch.Generator().manual_seed(0)
    cache_shape = (B, cfg.depth, cfg.num_heads, cfg.cache_frames, cfg.tokens_per_frame, cfg.head_dim)
    dit_args = (
        torch.randn(B, C, h, w, generator=g),
        torch.randn(B, cfg.time_embed_dim, generator=g),
        torch.randn(B, cfg.action_dim, generator=g),
        torch.randn(B, cfg.rope_dims[0] // 2, generator=g),
        torch.randn(B, cfg.rope_dims[0] // 2, generator=g),
        torch.randn(cache_shape, generator=g),
        torch.randn(cache_shape, generator=g),
        torch.full((B,), max(1, cfg.cache_frames // 2), dtype=torch.int64),
    )
    files = {"dit_pass": "dit_pass.onnx", "vae_decoder": "vae_decoder.onnx"}
    if encoder:
        files["vae_encoder"] = "vae_encoder.onnx"
    with torch.no_grad():
        _export(DiTPass(model.dit).eval(), dit_args, out / files["dit_pass"], io["dit_pass"], opset)
        _export(Decoder(model.vae.decoder, vae_output == "uint8").eval(), (torch.randn(B, C, h, w, generator=g),),
                out / files["vae_decoder"], io["vae_decoder"], opset)
        if encoder:
            frames = torch.randint(0, 256, (B, cfg.frame_height, cfg.frame_width, 3), dtype=torch.uint8, generator=g)
            _export(Encoder(model.vae.encoder).eval(), (frames,), out / files["vae_encoder"], io["vae_encoder"],
                    opset)
    if not encoder:
        io.pop("vae_encoder")
    s = spec(cfg, int(opset), vae_output, files, io)
    (out / SPEC_NAME).write_text(json.dumps(s, indent=1) + "\n")
    return s
