"""Waypoint-1.5 checkpoint folder -> one `.nfd` file (`nfd-rt convert waypoint DIR -o model.nfd`). No network.

The folder (docs/waypoint.md, "Getting the weights"):

    DIR/config.yaml              the model's config, as Overworld/Waypoint-1.5-1B ships it (world_engine reads it)
    DIR/model.safetensors        the transformer (393 BF16 tensors for Waypoint-1.5-1B)
    DIR/taehv/taehv1_5.pth       the TAEHV autoencoder, as Overworld-Models/taehv1_5 ships it (or
                                 taehv1_5.safetensors from madebyollin/taehv; in DIR itself is fine too)

The diffusers copy of the transformer in the same repository (`DIR/transformer/config.json` +
`DIR/transformer/diffusion_pytorch_model.safetensors`, the same tensor names) is read when there is no
config.yaml. Every option of the config is checked (an option this converter does not know is refused by name
unless `ignore_options` names it), every tensor name and shape is checked against the upstream layout (the first
missing, unexpected or mis-shaped tensor is named), the tensors are mapped onto `WaypointModel`'s state_dict
names and written as float32 by `nfd_rt.export.write_nfd`, one tensor in memory at a time. Needs numpy and
PyYAML (the `convert` extra); torch only to read a `.pth` TAEHV file.

`write_fixture` writes a random-weight folder in the same layout (tests; no real weights can be downloaded
here) and `upstream_shapes` is the published checkpoint's key/shape table for any config.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import OrderedDict
from typing import Any, Callable, Iterable

import numpy as np

from ..configs_waypoint import CONFIGS, TAEHVConfig, WaypointConfig


class ConversionError(ValueError):
    """The folder is not a Waypoint checkpoint this converter can read; the message names the first problem."""


# ---------------------------------------------------------------------------------------------------------------
# safetensors, read and written with numpy (bfloat16 as its 16 high bits of a float32)

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def bf16_to_f32(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even (finite values)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)) >> np.uint32(16)).astype(np.uint16)


class SafetensorsFile:
    """A safetensors file's table (checked before any data is read) and its tensors as float32 on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                (n,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
                if n is None or n > 100 * 2**20 or 8 + n > size:
                    raise ConversionError(f"{self.path}: not a safetensors file (bad header length)")
                header = json.loads(f.read(n).decode("utf-8"))
        except OSError as e:
            raise ConversionError(f"{self.path}: cannot read: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConversionError(f"{self.path}: not a safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        self.metadata = header.pop("__metadata__", {}) or {}
        self.data_start, data_len = 8 + n, size - 8 - n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (b, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
            if dtype not in _ST_DTYPES:
                raise ConversionError(f"{self.path}: tensor {name!r} has dtype {dtype}; this converter reads "
                                      f"{', '.join(_ST_DTYPES)}")
            count = int(np.prod(shape, dtype=np.int64))
            if not 0 <= b <= end <= data_len or end - b != count * np.dtype(_ST_DTYPES[dtype]).itemsize:
                raise ConversionError(f"{self.path}: tensor {name!r}: data offsets {[b, end]} do not fit its "
                                      f"{dtype}{list(shape)} inside the {data_len}-byte data section")
            self.entries[name] = (dtype, shape, b, end)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v[1] for k, v in self.entries.items()}

    def array(self, name: str) -> np.ndarray:
        dtype, shape, b, end = self.entries[name]
        raw = np.fromfile(self.path, dtype=np.dtype(_ST_DTYPES[dtype]), count=(end - b) // np.dtype(
            _ST_DTYPES[dtype]).itemsize, offset=self.data_start + b)
        a = bf16_to_f32(raw) if dtype == "BF16" else raw.astype(np.float32)
        return a.reshape(shape)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], dtype: str = "F32",
                      metadata: dict[str, str] | None = None) -> None:
    """Write float arrays as a safetensors file of one dtype (F32, F16 or BF16), names in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, a in tensors.items():
        a = np.asarray(a, dtype=np.float32)
        data = f32_to_bf16(a) if dtype == "BF16" else np.ascontiguousarray(a, dtype=_ST_DTYPES[dtype])
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for data in blobs:
            f.write(data.tobytes())


# ---------------------------------------------------------------------------------------------------------------
# config.yaml -> WaypointConfig

# world_engine's MODEL_CONFIG_DEFAULTS (src/model/base_model.py), merged under the file as upstream does.
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "auto_aspect_ratio": True, "gated_attn": False, "inference_fps": "${base_fps}", "model_type": "waypoint-1",
    "n_kv_heads": "${n_heads}", "patch": [1, 1], "prompt_conditioning": None, "rope_nyquist_frac": 0.8,
    "rope_theta": 10000.0, "taehv_ae": False, "temporal_compression": 1, "value_residual": False,
}

# Options read for the architecture (checked or mapped), and options known not to change inference (training or
# other-variant settings, the prompt encoder of a model without prompt conditioning, the autoencoder's hub name).
READ_OPTIONS = frozenset({
    "model_type", "n_layers", "d_model", "n_heads", "n_kv_heads", "mlp_ratio", "channels", "height", "width",
    "patch", "tokens_per_frame", "local_window", "global_window", "global_pinned_dilation", "global_attn_period",
    "global_attn_offset", "rope_impl", "rope_nyquist_frac", "rope_theta", "noise_conditioning", "value_residual",
    "gated_attn", "moe", "prompt_conditioning", "ctrl_conditioning", "ctrl_conditioning_period", "n_buttons",
    "scheduler_sigmas", "base_fps", "inference_fps", "temporal_compression", "taehv_ae", "auto_aspect_ratio",
    "causal",
})
IGNORED_OPTIONS = frozenset({
    "ctrl_cond_dropout", "prompt_cond_dropout", "prompt_conditioning_period", "prompt_embedding_dim",
    "prompt_encoder_uri", "n_frames", "max_frames", "ae_uri", "moe_n_experts", "moe_top_k", "moe_mlp_ratio",
    "gated_linear",
})
# Output sizes of upstream's auto_aspect_ratio (ChunkedStreamingTAEHV): autoencoder frame -> video frame.
AUTO_ASPECT_SIZES = {(512, 1024): (720, 1280), (256, 512): (360, 640)}


def _resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Upstream defaults under the file, then whole-value "${key}" references (OmegaConf interpolation)."""
    d = {**UPSTREAM_DEFAULTS, **raw}
    out = {}
    for k, v in d.items():
        seen = {k}
        while isinstance(v, str) and re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", v):
            ref = v[2:-1]
            if ref in seen or ref not in d:
                raise ConversionError(f"config option {k!r}: cannot resolve {v!r}")
            seen.add(ref)
            v = d[ref]
        out[k] = v
    return out


def config_from_upstream(raw: dict[str, Any], taehv: TAEHVConfig, ignore_options: Iterable[str] = (),
                         name: str | None = None, noise_features: int = 512) -> WaypointConfig:
    """The WaypointConfig of an upstream config (config.yaml / transformer/config.json as a dict), the TAEHV
    layout read from its weights and the noise embedding's Fourier features (upstream's NoiseConditioner always
    has 512; `convert` reads it from the weights). Raises ConversionError naming the first option it cannot
    take."""
    if not isinstance(raw, dict):
        raise ConversionError("the config is not a mapping of options")
    ignore = set(ignore_options)
    for k in raw:
        if k.startswith("_"):  # diffusers' own bookkeeping (_class_name, _diffusers_version, ...)
            continue
        if k not in READ_OPTIONS and k not in IGNORED_OPTIONS and k not in ignore:
            raise ConversionError(f"unknown config option {k!r}: this converter does not know what it changes "
                                  f"(if it does not matter for inference, pass --ignore-option {k})")
    d = _resolve({k: v for k, v in raw.items() if k not in ignore})

    def need(key: str) -> Any:
        if key not in d:
            raise ConversionError(f"config option {key!r} is missing")
        return d[key]

    def integer(key: str) -> int:
        v = need(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConversionError(f"config option {key!r} must be an integer, got {v!r}")
        return v

    def require(key: str, ok: Callable[[Any], bool], what: str) -> None:
        if key in d and not ok(d[key]):
            raise ConversionError(f"config option {key}={d[key]!r} is not supported: {what}")

    require("model_type", lambda v: v == "waypoint-1.5", "nfd_rt converts Waypoint-1.5 checkpoints "
            "(model_type: waypoint-1.5); Waypoint-1 has another autoencoder")
    require("rope_impl", lambda v: v == "ortho", "Waypoint-1.5 uses the ortho (x, y, t) RoPE")
    require("noise_conditioning", lambda v: v == "wan", "the adaLN heads must be the shared 'wan' ones")
    require("gated_attn", lambda v: v is False, "gated attention is not part of Waypoint-1.5")
    require("moe", lambda v: v is False, "the mixture-of-experts variant is not supported")
    require("prompt_conditioning", lambda v: v is None, "Waypoint-1.5 has no prompt cross-attention")
    require("ctrl_conditioning", lambda v: v is not None and v is not False, "controls are always fused")
    require("taehv_ae", lambda v: v is True, "the autoencoder must be TAEHV (taehv_ae: true)")
    require("causal", lambda v: v is True, "frames attend causally")
    require("value_residual", lambda v: isinstance(v, bool), "true or false")
    require("auto_aspect_ratio", lambda v: isinstance(v, bool), "true or false")

    patch = need("patch")
    if not (isinstance(patch, (list, tuple)) and len(patch) == 2 and patch[0] == patch[1] and
            isinstance(patch[0], int) and patch[0] >= 1):
        raise ConversionError(f"config option patch={patch!r} is not supported: a square patch [p, p]")
    p = int(patch[0])
    rows, cols = integer("height"), integer("width")
    if "tokens_per_frame" in d and integer("tokens_per_frame") != rows * cols:
        raise ConversionError(f"config option tokens_per_frame={d['tokens_per_frame']} is not height x width = "
                              f"{rows * cols}")
    fps, inference_fps, tc = need("base_fps"), need("inference_fps"), integer("temporal_compression")
    if tc != taehv.frames_per_latent:
        raise ConversionError(f"config option temporal_compression={tc} differs from the autoencoder's "
                              f"{taehv.frames_per_latent} frames per latent")
    latent_fps = inference_fps / tc
    if not latent_fps > 0 or fps % latent_fps:
        raise ConversionError(f"config options base_fps={fps}, inference_fps={inference_fps}: base_fps must be a "
                              f"multiple of the latent frame rate {latent_fps}")
    frame = (rows * p * taehv.spatial_factor, cols * p * taehv.spatial_factor)
    if d["auto_aspect_ratio"]:
        # Upstream's table: 16:8 autoencoder frames <-> 16:9 video of the same width. Other sizes (not in the
        # table upstream) follow the same rule.
        output = AUTO_ASPECT_SIZES.get(frame, (frame[1] * 9 // 16, frame[1]))
        if frame[1] * 9 % 16 or frame[1] != 2 * frame[0]:
            raise ConversionError(f"config option auto_aspect_ratio: {frame[1]}x{frame[0]} autoencoder frames are "
                                  "not 16:8 with a 16:9 video size (upstream knows "
                                  f"{', '.join(f'{w}x{h}' for h, w in AUTO_ASPECT_SIZES)})")
    else:
        output = frame
    sigmas = need("scheduler_sigmas")
    if not isinstance(sigmas, (list, tuple)) or not all(isinstance(s, (int, float)) for s in sigmas):
        raise ConversionError(f"config option scheduler_sigmas={sigmas!r} is not a list of numbers")
    try:
        cfg = WaypointConfig(
            name=name or "waypoint", frame_height=frame[0], frame_width=frame[1], output_height=output[0],
            output_width=output[1], latent_channels=integer("channels"), patch_size=p,
            hidden_size=integer("d_model"), depth=integer("n_layers"), num_heads=integer("n_heads"),
            num_kv_heads=integer("n_kv_heads"), mlp_ratio=integer("mlp_ratio"), noise_features=noise_features,
            value_residual=bool(d["value_residual"]), rope_theta=float(need("rope_theta")),
            rope_nyquist=float(need("rope_nyquist_frac")), time_stride=int(fps // latent_fps),
            n_buttons=integer("n_buttons"), control_period=integer("ctrl_conditioning_period"),
            local_window=integer("local_window"), global_window=integer("global_window"),
            global_stride=integer("global_pinned_dilation"), global_period=integer("global_attn_period"),
            global_offset=integer("global_attn_offset"), sigmas=tuple(float(s) for s in sigmas), taehv=taehv)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    if name is None:  # a published geometry keeps its nfd_rt name
        cfg = cfg.replace(name=next((n for n, c in CONFIGS.items() if c == cfg.replace(name=n)), "waypoint"))
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The upstream tensor tables

def upstream_shapes(cfg: WaypointConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every tensor of the published transformer checkpoint (model.safetensors) and its shape, for `cfg`.
    For waypoint-1.5-1b: 393 tensors, 1,860,823,096 values."""
    D, C, p = cfg.hidden_size, cfg.latent_channels, cfg.patch_size
    kv, hidden = cfg.num_kv_heads * cfg.head_dim, cfg.mlp_ratio * D
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    s["ctrl_cfg.null_emb"] = (1, 1, D)
    s["ctrl_emb.mlp.fc1.weight"] = (hidden, cfg.control_dim)
    s["ctrl_emb.mlp.fc2.weight"] = (D, hidden)
    s["denoise_step_emb.mlp.fc1.weight"] = (4 * D, cfg.noise_features)
    s["denoise_step_emb.mlp.fc2.weight"] = (D, 4 * D)
    s["out_norm.fc.weight"] = (2 * D, D)
    s["patchify.weight"] = (D, C, p, p)
    s["unpatchify.bias"] = (C,)
    s["unpatchify.weight"] = (D, C, p, p)
    for i in range(cfg.depth):
        b = f"transformer.blocks.{i}."
        s[b + "attn.k_proj.weight"] = (kv, D)
        s[b + "attn.out_proj.weight"] = (D, D)
        s[b + "attn.q_proj.weight"] = (cfg.num_heads * cfg.head_dim, D)
        s[b + "attn.v_lamb"] = ()
        s[b + "attn.v_proj.weight"] = (kv, D)
        for head in ("attn_cond_head", "mlp_cond_head"):
            s[b + head + ".bias_in"] = (D,)
            for j in range(3):
                s[b + f"{head}.cond_proj.{j}.weight"] = (D, D)
        s[b + "dit_mlp.fc1.weight"] = (hidden, D)
        s[b + "dit_mlp.fc2.weight"] = (D, hidden)
        if cfg.has_control_fusion(i):
            for n in ("fc1_c", "fc1_x", "fc2"):
                s[b + f"ctrl_mlpfusion.{n}.weight"] = (D, D)
    return s


# TAEHV's nn.Sequential indices (madebyollin/taehv, taehv.py): encoder stage s = (time pool, stride-2 conv,
# three memory blocks); decoder stage s = (three memory blocks, [upsample], time grow, conv).
_ENC_STAGES = [(2, 3, (4, 5, 6)), (7, 8, (9, 10, 11)), (12, 13, (14, 15, 16))]
_DEC_STAGES = [((3, 4, 5), 7, 8), ((9, 10, 11), 13, 14), ((15, 16, 17), 19, 20)]


def _memblock_shapes(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "conv.0.weight": (n, 2 * n, 3, 3), prefix + "conv.0.bias": (n,),
            prefix + "conv.2.weight": (n, n, 3, 3), prefix + "conv.2.bias": (n,),
            prefix + "conv.4.weight": (n, n, 3, 3), prefix + "conv.4.bias": (n,)}


def upstream_taehv_shapes(cfg: WaypointConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every tensor of the TAEHV file (taehv1_5.pth / .safetensors) and its shape, for `cfg`. A decoder time-grow
    layer whose stride is 1 may hold twice the rows (TAEHV keeps the last ones): see `taehv_grow_rows`."""
    t, C = cfg.taehv, cfg.latent_channels
    E, ch, pp = t.encoder_channels, t.decoder_channels, 3 * t.patch_size**2
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    s["encoder.0.weight"], s["encoder.0.bias"] = (E, pp, 3, 3), (E,)
    for k, (pool, down, blocks) in enumerate(_ENC_STAGES):
        s[f"encoder.{pool}.conv.weight"] = (E, E * (2 if t.time_downscale[k] else 1), 1, 1)
        s[f"encoder.{down}.weight"] = (E, E, 3, 3)
        for b in blocks:
            s.update(_memblock_shapes(f"encoder.{b}.", E))
    s["encoder.17.weight"], s["encoder.17.bias"] = (C, E, 3, 3), (C,)
    s["decoder.1.weight"], s["decoder.1.bias"] = (ch[0], C, 3, 3), (ch[0],)
    for k, (blocks, grow, conv) in enumerate(_DEC_STAGES):
        for b in blocks:
            s.update(_memblock_shapes(f"decoder.{b}.", ch[k]))
        s[f"decoder.{grow}.conv.weight"] = (ch[k] * (2 if t.time_upscale[k] else 1), ch[k], 1, 1)
        s[f"decoder.{conv}.weight"] = (ch[k + 1], ch[k], 3, 3)
    s["decoder.22.weight"], s["decoder.22.bias"] = (pp, ch[3], 3, 3), (pp,)
    return s


def taehv_from_shapes(shapes: dict[str, tuple[int, ...]], path: str) -> TAEHVConfig:
    """The TAEHV layout of a weight table: channels and patch size from the convolutions' shapes, the encoder's
    time pooling from its pool layers; the decoder's time growth is upstream's default (False, True, True), the
    one world_engine builds (TAEHV(checkpoint) with default arguments)."""
    def get(key: str, rank: int) -> tuple[int, ...]:
        if key not in shapes:
            raise ConversionError(f"{path}: missing tensor {key!r} (not a TAEHV checkpoint?)")
        if len(shapes[key]) != rank:
            raise ConversionError(f"{path}: tensor {key!r} has shape {list(shapes[key])}, expected {rank} axes")
        return shapes[key]

    E, pp = get("encoder.0.weight", 4)[:2]
    patch = int(round((pp / 3) ** 0.5))
    if 3 * patch * patch != pp:
        raise ConversionError(f"{path}: tensor 'encoder.0.weight' takes {pp} input channels, not 3 p^2")
    down = tuple(get(f"encoder.{pool}.conv.weight", 4)[1] == 2 * E for pool, _, _ in _ENC_STAGES)
    ch = (get("decoder.1.weight", 4)[0], get("decoder.8.weight", 4)[0], get("decoder.14.weight", 4)[0],
          get("decoder.20.weight", 4)[0])
    return TAEHVConfig(patch_size=patch, encoder_channels=E, decoder_channels=ch, time_downscale=down,
                       time_upscale=(False, True, True))


def check_table(actual: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], path: str,
                also: Callable[[str, tuple[int, ...]], bool] | None = None) -> None:
    """Every expected tensor present with its shape and no other; `also(name, shape)` may accept an alternative
    shape. Raises ConversionError naming the first problem (in the expected order)."""
    for name, shape in expected.items():
        if name not in actual:
            raise ConversionError(f"{path}: missing tensor {name!r} (expected shape {list(shape)})")
        got = tuple(actual[name])
        if got != tuple(shape) and not (also and also(name, got)):
            raise ConversionError(f"{path}: tensor {name!r} has shape {list(got)}, expected {list(shape)}")
    extra = [n for n in actual if n not in expected]
    if extra:
        raise ConversionError(f"{path}: unexpected tensor {sorted(extra)[0]!r} (not part of a Waypoint-1.5 "
                              f"checkpoint of this config; {len(extra)} unexpected in all)")


def _grow_alternative(cfg: WaypointConfig) -> Callable[[str, tuple[int, ...]], bool]:
    def ok(name: str, shape: tuple[int, ...]) -> bool:
        for k, (_, grow, _) in enumerate(_DEC_STAGES):
            n = cfg.taehv.decoder_channels[k]
            if name == f"decoder.{grow}.conv.weight" and not cfg.taehv.time_upscale[k]:
                return shape == (2 * n, n, 1, 1)
        return False
    return ok


# ---------------------------------------------------------------------------------------------------------------
# Upstream names -> WaypointModel's state_dict


class _Lazy:
    """A tensor materialised when written (nfd_rt.export.write_nfd), so one tensor is in memory at a time."""

    def __init__(self, shape: tuple[int, ...], make: Callable[[], np.ndarray]):
        self.shape, self._make = tuple(shape), make

    def __array__(self, dtype=None, copy=None):
        a = self._make()
        return a if dtype is None else a.astype(dtype, copy=False)


def reference_tensors(cfg: WaypointConfig, get: Callable[[str], np.ndarray],
                      get_taehv: Callable[[str], np.ndarray]) -> dict[str, _Lazy]:
    """WaypointModel's state_dict (lazy float32 arrays) from upstream tensors `get(name)` / `get_taehv(name)`."""
    D, C, p = cfg.hidden_size, cfg.latent_channels, cfg.patch_size
    out: dict[str, _Lazy] = {}

    def put(name: str, shape: tuple[int, ...], make: Callable[[], np.ndarray]) -> None:
        out[name] = _Lazy(shape, make)

    def rename(ours: str, theirs: str, shape: tuple[int, ...], source=get) -> None:
        put(ours, shape, lambda: source(theirs).reshape(shape))

    put("dit.patch_embed.weight", (D, cfg.patch_dim), lambda: get("patchify.weight").reshape(D, cfg.patch_dim))
    for ours, theirs in (("noise_embed", "denoise_step_emb.mlp"), ("control_embed", "ctrl_emb.mlp")):
        for fc in ("fc1", "fc2"):
            w = f"{theirs}.{fc}.weight"
            rename(f"dit.{ours}.{fc}.weight", w, _shape_of(cfg, w))
    heads = [f"transformer.blocks.0.{h}.cond_proj.{j}.weight" for h in ("attn_cond_head", "mlp_cond_head")
             for j in range(3)]
    put("dit.mod_proj.weight", (6 * D, D), lambda: np.concatenate([get(h) for h in heads]))
    for i in range(cfg.depth):
        b, o = f"transformer.blocks.{i}.", f"dit.blocks.{i}."
        rename(o + "attn_mod_bias", b + "attn_cond_head.bias_in", (D,))
        rename(o + "mlp_mod_bias", b + "mlp_cond_head.bias_in", (D,))
        qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        put(o + "qkv.weight", (qkv_rows, D), lambda b=b: np.concatenate(
            [get(b + f"attn.{x}_proj.weight") for x in "qkv"]))
        rename(o + "out.weight", b + "attn.out_proj.weight", (D, D))
        rename(o + "v_mix", b + "attn.v_lamb", (1,))
        if cfg.has_control_fusion(i):
            for ours, theirs in (("fusion_x", "fc1_x"), ("fusion_c", "fc1_c"), ("fusion_out", "fc2")):
                rename(o + f"{ours}.weight", b + f"ctrl_mlpfusion.{theirs}.weight", (D, D))
        rename(o + "fc1.weight", b + "dit_mlp.fc1.weight", (cfg.mlp_ratio * D, D))
        rename(o + "fc2.weight", b + "dit_mlp.fc2.weight", (D, cfg.mlp_ratio * D))
    rename("dit.final_mod.weight", "out_norm.fc.weight", (2 * D, D))
    # unpatchify is a stride-p transposed convolution [D, C, p, p]: output (c, py, px) of a token is row
    # c p p + py p + px of our final linear, and its bias is the channel's bias at every position.
    put("dit.final.weight", (cfg.patch_dim, D),
        lambda: get("unpatchify.weight").transpose(1, 2, 3, 0).reshape(cfg.patch_dim, D))
    put("dit.final.bias", (cfg.patch_dim,), lambda: np.repeat(get("unpatchify.bias"), p * p))

    t = cfg.taehv
    tae = "taehv."

    def memblock(ours: str, theirs: str, n: int) -> None:
        for a, b_ in (("conv1", "conv.0"), ("conv2", "conv.2"), ("conv3", "conv.4")):
            rename(f"{ours}.{a}.weight", f"{theirs}.{b_}.weight", (n, 2 * n if a == "conv1" else n, 3, 3), get_taehv)
            rename(f"{ours}.{a}.bias", f"{theirs}.{b_}.bias", (n,), get_taehv)

    E, pp = t.encoder_channels, 3 * t.patch_size**2
    rename(tae + "encoder.conv_in.weight", "encoder.0.weight", (E, pp, 3, 3), get_taehv)
    rename(tae + "encoder.conv_in.bias", "encoder.0.bias", (E,), get_taehv)
    for k, (pool, down, blocks) in enumerate(_ENC_STAGES):
        stride = 2 if t.time_downscale[k] else 1
        rename(tae + f"encoder.pools.{k}.weight", f"encoder.{pool}.conv.weight", (E, E * stride, 1, 1), get_taehv)
        rename(tae + f"encoder.downs.{k}.weight", f"encoder.{down}.weight", (E, E, 3, 3), get_taehv)
        for j, b in enumerate(blocks):
            memblock(tae + f"encoder.blocks.{k}.{j}", f"encoder.{b}", E)
    rename(tae + "encoder.conv_out.weight", "encoder.17.weight", (C, E, 3, 3), get_taehv)
    rename(tae + "encoder.conv_out.bias", "encoder.17.bias", (C,), get_taehv)
    ch = t.decoder_channels
    rename(tae + "decoder.conv_in.weight", "decoder.1.weight", (ch[0], C, 3, 3), get_taehv)
    rename(tae + "decoder.conv_in.bias", "decoder.1.bias", (ch[0],), get_taehv)
    for k, (blocks, grow, conv) in enumerate(_DEC_STAGES):
        for j, b in enumerate(blocks):
            memblock(tae + f"decoder.blocks.{k}.{j}", f"decoder.{b}", ch[k])
        rows = ch[k] * (2 if t.time_upscale[k] else 1)
        # A stride-1 grow stored with a stride-2 layer's rows keeps its last rows (TAEHV.patch_tgrow_layers).
        put(tae + f"decoder.grows.{k}.weight", (rows, ch[k], 1, 1),
            lambda grow=grow, rows=rows: get_taehv(f"decoder.{grow}.conv.weight")[-rows:])
        rename(tae + f"decoder.convs.{k}.weight", f"decoder.{conv}.weight", (ch[k + 1], ch[k], 3, 3), get_taehv)
    rename(tae + "decoder.conv_out.weight", "decoder.22.weight", (pp, ch[3], 3, 3), get_taehv)
    rename(tae + "decoder.conv_out.bias", "decoder.22.bias", (pp,), get_taehv)
    return out


def _shape_of(cfg: WaypointConfig, name: str) -> tuple[int, ...]:
    return upstream_shapes(cfg)[name]


def check_tied_heads(cfg: WaypointConfig, get: Callable[[str], np.ndarray], path: str) -> None:
    """Upstream shares the six adaLN projections across layers (world_engine ties them to block 0's); the
    checkpoint stores a copy per layer. Every copy must equal layer 0's, bit for bit."""
    for h in ("attn_cond_head", "mlp_cond_head"):
        for j in range(3):
            ref = get(f"transformer.blocks.0.{h}.cond_proj.{j}.weight")
            for i in range(1, cfg.depth):
                name = f"transformer.blocks.{i}.{h}.cond_proj.{j}.weight"
                if not np.array_equal(get(name), ref):
                    raise ConversionError(f"{path}: tensor {name!r} differs from layer 0's: nfd_rt shares the adaLN "
                                          "projections across layers, as upstream's world_engine does (it ties "
                                          "them); this checkpoint's layers have their own")


# ---------------------------------------------------------------------------------------------------------------
# The folder


def find_files(folder: str | os.PathLike, taehv: str | os.PathLike | None = None) -> dict[str, str]:
    """The config, transformer and TAEHV files of a checkpoint folder (see the module docstring)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder}: not a folder")
    if os.path.isfile(os.path.join(folder, "config.yaml")):
        config, model = os.path.join(folder, "config.yaml"), os.path.join(folder, "model.safetensors")
    elif os.path.isfile(os.path.join(folder, "transformer", "config.json")):
        config = os.path.join(folder, "transformer", "config.json")
        model = os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors")
    else:
        raise ConversionError(f"{folder}: no config.yaml (nor transformer/config.json): not a Waypoint-1.5 "
                              "checkpoint folder")
    if not os.path.isfile(model):
        raise ConversionError(f"{model}: missing (the transformer's weights)")
    if taehv is None:
        candidates = [os.path.join(folder, *sub, f"taehv1_5.{ext}") for ext in ("safetensors", "pth")
                      for sub in ((), ("taehv",))]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            looked = ", ".join(os.path.relpath(c, folder) for c in candidates)
            raise ConversionError(f"{folder}: no TAEHV weights (looked for {looked}; download "
                                  "Overworld-Models/taehv1_5 into taehv/, or pass --taehv FILE)")
        taehv = found[0]
    elif not os.path.isfile(taehv):
        raise ConversionError(f"{taehv}: TAEHV weights not found")
    return {"config": config, "model": model, "taehv": os.fspath(taehv)}


def read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e.strerror}") from None
    if path.endswith(".json"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: not valid JSON ({e})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConversionError("reading config.yaml needs PyYAML: pip install 'nfd_rt[convert]'") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConversionError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConversionError(f"{path}: not a mapping of options")
    return d


def _taehv_source(path: str) -> tuple[dict[str, tuple[int, ...]], Callable[[str], np.ndarray]]:
    if path.endswith(".pth") or path.endswith(".pt"):
        try:
            import torch
        except ImportError:
            raise ConversionError(f"{path}: reading a .pth file needs PyTorch (or use taehv1_5.safetensors)") from None
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a bad pickle can raise anything
            raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None
        if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
            raise ConversionError(f"{path}: not a state dict of tensors")
        return ({k: tuple(v.shape) for k, v in sd.items()},
                lambda name: sd[name].detach().to(torch.float32).numpy())
    st = SafetensorsFile(path)
    return st.shapes(), st.array


def convert(folder: str | os.PathLike, out: str | os.PathLike, taehv: str | os.PathLike | None = None,
            ignore_options: Iterable[str] = (), name: str | None = None) -> WaypointConfig:
    """Convert a Waypoint-1.5 checkpoint folder to the .nfd file `out`; returns the config written. Raises
    ConversionError (a ValueError) naming the first problem, before anything is written."""
    files = find_files(folder, taehv)
    raw = read_config(files["config"])
    tae_shapes, tae_get = _taehv_source(files["taehv"])
    model = SafetensorsFile(files["model"])
    noise = model.shapes().get("denoise_step_emb.mlp.fc1.weight", (0, 512))
    cfg = config_from_upstream(raw, taehv_from_shapes(tae_shapes, files["taehv"]), ignore_options, name,
                               noise_features=noise[-1] if len(noise) == 2 else 512)
    check_table(tae_shapes, upstream_taehv_shapes(cfg), files["taehv"], also=_grow_alternative(cfg))
    check_table(model.shapes(), upstream_shapes(cfg), files["model"])
    check_tied_heads(cfg, model.array, files["model"])
    tensors = reference_tensors(cfg, model.array, tae_get)
    from ..nfd_file import write_nfd

    tmp = os.fspath(out) + ".part"
    try:
        write_nfd(tensors, cfg, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: random weights in the upstream layout


def upstream_config(cfg: WaypointConfig) -> dict[str, Any]:
    """A config.yaml for `cfg` with the options the published one has (those world_engine and the public ports
    read)."""
    latent_fps = 60 // cfg.frames_per_latent
    return {
        "model_type": "waypoint-1.5", "n_layers": cfg.depth, "d_model": cfg.hidden_size, "n_heads": cfg.num_heads,
        "n_kv_heads": cfg.num_kv_heads, "mlp_ratio": cfg.mlp_ratio, "channels": cfg.latent_channels,
        "height": cfg.grid[0], "width": cfg.grid[1], "patch": [cfg.patch_size, cfg.patch_size],
        "tokens_per_frame": cfg.tokens_per_frame, "local_window": cfg.local_window,
        "global_window": cfg.global_window, "global_pinned_dilation": cfg.global_stride,
        "global_attn_period": cfg.global_period, "global_attn_offset": cfg.global_offset, "rope_impl": "ortho",
        "rope_nyquist_frac": cfg.rope_nyquist, "rope_theta": cfg.rope_theta, "noise_conditioning": "wan",
        "value_residual": cfg.value_residual, "gated_attn": False, "moe": False, "prompt_conditioning": None,
        "ctrl_conditioning": True, "ctrl_cond_dropout": 0.0, "ctrl_conditioning_period": cfg.control_period,
        "n_buttons": cfg.n_buttons, "scheduler_sigmas": list(cfg.sigmas), "base_fps": latent_fps * cfg.time_stride,
        "inference_fps": 60, "temporal_compression": cfg.frames_per_latent, "n_frames": 512, "causal": True,
        "taehv_ae": True, "ae_uri": "Overworld-Models/taehv1_5",
        "auto_aspect_ratio": (cfg.output_height, cfg.output_width) != (cfg.frame_height, cfg.frame_width),
    }


def random_upstream(cfg: WaypointConfig, seed: int = 0, grow_rows: bool = True) -> tuple[dict, dict]:
    """Random tensors (float32) in the upstream layout: the transformer (layer copies of the shared adaLN
    projections equal, as in the published file) and the TAEHV state dict (with the stride-2 rows in the
    stride-1 grow layer, as TAEHV files hold them, when `grow_rows`)."""
    r = np.random.default_rng(seed)

    def draw(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith("v_lamb"):
            return np.asarray(r.uniform(0.1, 0.9), np.float32).reshape(shape)
        if len(shape) <= 1:
            return (0.05 * r.standard_normal(shape)).astype(np.float32)
        fan_in = int(np.prod(shape[1:]))
        if name in ("unpatchify.weight",):
            fan_in = shape[0]
        return (r.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    model = {}
    for name, shape in upstream_shapes(cfg).items():
        m = re.fullmatch(r"transformer\.blocks\.(\d+)\.((attn|mlp)_cond_head\.cond_proj\.\d\.weight)", name)
        model[name] = model[f"transformer.blocks.0.{m.group(2)}"] if m and m.group(1) != "0" else draw(name, shape)
    grow = _grow_alternative(cfg)
    taehv = {}
    for name, shape in upstream_taehv_shapes(cfg).items():
        for k, (_, g, _) in enumerate(_DEC_STAGES):
            if grow_rows and name == f"decoder.{g}.conv.weight" and not cfg.taehv.time_upscale[k]:
                shape = (2 * shape[0],) + shape[1:]
                assert grow(name, shape)
        taehv[name] = draw(name, shape)
    return model, taehv


def write_fixture(folder: str | os.PathLike, cfg: WaypointConfig, seed: int = 0, taehv_format: str = "safetensors",
                  layout: str = "world_engine") -> dict[str, str]:
    """A random-weight checkpoint folder of `cfg` in the upstream layout: config.yaml + model.safetensors (BF16,
    as published) or, layout "diffusers", transformer/config.json + transformer/diffusion_pytorch_model
    .safetensors; TAEHV weights in taehv/taehv1_5.safetensors (F16) or, taehv_format "pth", taehv/taehv1_5.pth
    (needs torch). Returns the files written."""
    folder = os.fspath(folder)
    model, taehv = random_upstream(cfg, seed)
    raw = upstream_config(cfg)
    if layout == "world_engine":
        os.makedirs(folder, exist_ok=True)
        config, weights = os.path.join(folder, "config.yaml"), os.path.join(folder, "model.safetensors")
        import yaml

        with open(config, "w") as f:
            yaml.safe_dump(raw, f, sort_keys=False)
    elif layout == "diffusers":
        os.makedirs(os.path.join(folder, "transformer"), exist_ok=True)
        config = os.path.join(folder, "transformer", "config.json")
        weights = os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors")
        with open(config, "w") as f:
            json.dump({"_class_name": "WorldModel", "_diffusers_version": "0.36.0", **raw}, f, indent=1)
    else:
        raise ValueError(f"layout must be 'world_engine' or 'diffusers', got {layout!r}")
    write_safetensors(weights, model, dtype="BF16", metadata={"format": "pt"})
    os.makedirs(os.path.join(folder, "taehv"), exist_ok=True)
    if taehv_format == "pth":
        import torch

        tae = os.path.join(folder, "taehv", "taehv1_5.pth")
        torch.save({k: torch.from_numpy(v).half() for k, v in taehv.items()}, tae)
    else:
        tae = os.path.join(folder, "taehv", "taehv1_5.safetensors")
        write_safetensors(tae, taehv, dtype="F16")
    return {"config": config, "model": weights, "taehv": tae}
