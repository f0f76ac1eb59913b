"""Oasis-500M checkpoints -> one `.nfd` file (docs/oasis.md).

Upstream (etched-ai/open-oasis, weights on the Hugging Face hub as Etched/oasis-500m) ships two files: the DiT
(`oasis500m.safetensors`) and the ViT VAE (`vit-l-20.safetensors`), `.safetensors` or `.pt` state dicts of the
modules its dit.py / vae.py build. `convert(dit, vae, out)` checks every name and shape of both against the
config, names the first problem, then writes our tensor names (the state_dict of
`nfd_rt.reference.oasis.OasisModel`) one tensor at a time. No network access.

What changes on the way (each rule in `mapping`):
- patch embeddings: Conv2d weights [D, C, p, p] -> Linear weights [D, C p p] (same (c, py, px) order);
- the DiT's final linear: output rows reordered from upstream's (py, px, c) to our (c, py, px) patch order;
- the VAE's quant_conv: only the mean half (first latent_channels rows) is kept: inference never samples;
- every other tensor is copied under its new name; values become float32 (format version 1).
The RoPE frequency tensors upstream keeps as (non-learned) parameters are not weights: the config defines
them; when present they are checked against the config and not written.

`write_upstream_fixture(cfg, dit_path, vae_path)` writes random weights in the exact upstream layout (names,
shapes, the RoPE frequency tensors a safetensors save keeps), at any config's size, for tests.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from .. import configs
from ..configs import OasisConfig


class ConversionError(ValueError):
    """An upstream checkpoint does not match what the converter expects; the message names the first problem."""


# ---------------------------------------------------------------------------------------------------------------
# The upstream layout


def upstream_dit_shapes(cfg: OasisConfig) -> dict[str, tuple[int, ...]]:
    """Every learned tensor of upstream's DiT (dit.py: DiT with SpatioTemporalDiTBlock) for `cfg`, with its shape."""
    D, C, p, A = cfg.hidden_size, cfg.latent_channels, cfg.patch_size, cfg.action_dim
    M = cfg.mlp_ratio * D
    s: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (D, C, p, p),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, cfg.time_embed_dim),
        "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D),
        "t_embedder.mlp.2.bias": (D,),
        "external_cond.weight": (D, A),
        "external_cond.bias": (D,),
    }
    for i in range(cfg.depth):
        for axis in ("s", "t"):
            b = f"blocks.{i}.{axis}_"
            s[b + "adaLN_modulation.1.weight"] = (6 * D, D)
            s[b + "adaLN_modulation.1.bias"] = (6 * D,)
            s[b + "attn.to_qkv.weight"] = (3 * D, D)
            s[b + "attn.to_out.weight"] = (D, D)
            s[b + "attn.to_out.bias"] = (D,)
            s[b + "mlp.fc1.weight"] = (M, D)
            s[b + "mlp.fc1.bias"] = (M,)
            s[b + "mlp.fc2.weight"] = (D, M)
            s[b + "mlp.fc2.bias"] = (D,)
    s.update({
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
        "final_layer.linear.weight": (p * p * C, D),
        "final_layer.linear.bias": (p * p * C,),
    })
    return s


def upstream_dit_rope(cfg: OasisConfig) -> dict[str, tuple[int, ...]]:
    """The RoPE frequency tensors upstream's DiT state_dict holds (one module shared by every block, so a
    `torch.save(state_dict)` has all these names and a safetensors `save_model` keeps one per shared tensor:
    `blocks.0.s_attn.rotary_emb.freqs` and `blocks.0.t_attn.rotary_emb.freqs`). Optional: any subset."""
    n_s, n_t = cfg.spatial_rope_dim // 2, cfg.head_dim // 2
    s = {"spatial_rotary_emb.freqs": (n_s,), "temporal_rotary_emb.freqs": (n_t,)}
    for i in range(cfg.depth):
        s[f"blocks.{i}.s_attn.rotary_emb.freqs"] = (n_s,)
        s[f"blocks.{i}.t_attn.rotary_emb.freqs"] = (n_t,)
    return s


def upstream_vae_shapes(cfg: OasisConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of upstream's VAE (vae.py: AutoencoderKL, "vit-l-20-shallow-encoder") for `cfg`. Its RoPE
    tables are non-persistent buffers: not in the state dict."""
    v, C = cfg.vae, cfg.latent_channels
    s: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (v.encoder_dim, 3, v.patch_size, v.patch_size),
        "patch_embed.proj.bias": (v.encoder_dim,),
    }

    def blocks(prefix: str, depth: int, E: int) -> None:
        M = v.mlp_ratio * E
        for i in range(depth):
            b = f"{prefix}.{i}."
            s.update({
                b + "norm1.weight": (E,), b + "norm1.bias": (E,),
                b + "attn.qkv.weight": (3 * E, E), b + "attn.qkv.bias": (3 * E,),
                b + "attn.proj.weight": (E, E), b + "attn.proj.bias": (E,),
                b + "norm2.weight": (E,), b + "norm2.bias": (E,),
                b + "mlp.fc1.weight": (M, E), b + "mlp.fc1.bias": (M,),
                b + "mlp.fc2.weight": (E, M), b + "mlp.fc2.bias": (E,),
            })

    blocks("encoder", v.encoder_depth, v.encoder_dim)
    s.update({
        "enc_norm.weight": (v.encoder_dim,), "enc_norm.bias": (v.encoder_dim,),
        "quant_conv.weight": (2 * C, v.encoder_dim), "quant_conv.bias": (2 * C,),
        "post_quant_conv.weight": (v.decoder_dim, C), "post_quant_conv.bias": (v.decoder_dim,),
    })
    blocks("decoder", v.decoder_depth, v.decoder_dim)
    s.update({
        "dec_norm.weight": (v.decoder_dim,), "dec_norm.bias": (v.decoder_dim,),
        "predictor.weight": (cfg.vae_patch_dim, v.decoder_dim), "predictor.bias": (cfg.vae_patch_dim,),
    })
    return s


def upstream_rope_values(cfg: OasisConfig, name: str):
    """The values upstream computes for a RoPE frequency tensor (float32, as its RotaryEmbedding does)."""
    import torch

    if "t_attn" in name or name.startswith("temporal"):
        d = cfg.head_dim
        return 1.0 / (cfg.temporal_rope_theta ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    return torch.linspace(1.0, cfg.spatial_rope_max_freq / 2, cfg.spatial_rope_dim // 2) * math.pi


# ---------------------------------------------------------------------------------------------------------------
# Upstream names -> ours


@dataclass(frozen=True)
class Rule:
    """Our tensor `nfd` comes from upstream tensor `key` of file `source` ("dit" or "vae") through `transform`:
    "copy", "conv_to_linear" ([O, I, k, k] -> [O, I k k]), "patch_order" (final-layer rows (py, px, c) ->
    (c, py, px)) or "mean_half" (the first latent_channels rows of quant_conv)."""

    nfd: str
    source: str
    key: str
    transform: str = "copy"


def mapping(cfg: OasisConfig) -> list[Rule]:
    """One rule per tensor of the .nfd file, in our names' order of construction."""
    r = [
        Rule("dit.patch_embed.weight", "dit", "x_embedder.proj.weight", "conv_to_linear"),
        Rule("dit.patch_embed.bias", "dit", "x_embedder.proj.bias"),
        Rule("dit.time_embed.fc1.weight", "dit", "t_embedder.mlp.0.weight"),
        Rule("dit.time_embed.fc1.bias", "dit", "t_embedder.mlp.0.bias"),
        Rule("dit.time_embed.fc2.weight", "dit", "t_embedder.mlp.2.weight"),
        Rule("dit.time_embed.fc2.bias", "dit", "t_embedder.mlp.2.bias"),
        Rule("dit.action_embed.weight", "dit", "external_cond.weight"),
        Rule("dit.action_embed.bias", "dit", "external_cond.bias"),
    ]
    for i in range(cfg.depth):
        for axis, ours in (("s", "spatial"), ("t", "temporal")):
            up, b = f"blocks.{i}.{axis}_", f"dit.blocks.{i}.{ours}."
            r += [
                Rule(b + "adaln.weight", "dit", up + "adaLN_modulation.1.weight"),
                Rule(b + "adaln.bias", "dit", up + "adaLN_modulation.1.bias"),
                Rule(b + "qkv.weight", "dit", up + "attn.to_qkv.weight"),
                Rule(b + "proj.weight", "dit", up + "attn.to_out.weight"),
                Rule(b + "proj.bias", "dit", up + "attn.to_out.bias"),
                Rule(b + "fc1.weight", "dit", up + "mlp.fc1.weight"),
                Rule(b + "fc1.bias", "dit", up + "mlp.fc1.bias"),
                Rule(b + "fc2.weight", "dit", up + "mlp.fc2.weight"),
                Rule(b + "fc2.bias", "dit", up + "mlp.fc2.bias"),
            ]
    r += [
        Rule("dit.final.adaln.weight", "dit", "final_layer.adaLN_modulation.1.weight"),
        Rule("dit.final.adaln.bias", "dit", "final_layer.adaLN_modulation.1.bias"),
        Rule("dit.final.linear.weight", "dit", "final_layer.linear.weight", "patch_order"),
        Rule("dit.final.linear.bias", "dit", "final_layer.linear.bias", "patch_order"),
        Rule("vae.encoder.patch_embed.weight", "vae", "patch_embed.proj.weight", "conv_to_linear"),
        Rule("vae.encoder.patch_embed.bias", "vae", "patch_embed.proj.bias"),
    ]

    def blocks(ours: str, theirs: str, depth: int) -> list[Rule]:
        out = []
        for i in range(depth):
            b, up = f"{ours}.{i}.", f"{theirs}.{i}."
            for a, u in (("norm1", "norm1"), ("qkv", "attn.qkv"), ("proj", "attn.proj"), ("norm2", "norm2"),
                         ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
                out += [Rule(b + a + ".weight", "vae", up + u + ".weight"), Rule(b + a + ".bias", "vae", up + u + ".bias")]
        return out

    r += blocks("vae.encoder.blocks", "encoder", cfg.vae.encoder_depth)
    r += [
        Rule("vae.encoder.norm.weight", "vae", "enc_norm.weight"),
        Rule("vae.encoder.norm.bias", "vae", "enc_norm.bias"),
        Rule("vae.encoder.to_latent.weight", "vae", "quant_conv.weight", "mean_half"),
        Rule("vae.encoder.to_latent.bias", "vae", "quant_conv.bias", "mean_half"),
        Rule("vae.decoder.from_latent.weight", "vae", "post_quant_conv.weight"),
        Rule("vae.decoder.from_latent.bias", "vae", "post_quant_conv.bias"),
    ]
    r += blocks("vae.decoder.blocks", "decoder", cfg.vae.decoder_depth)
    r += [
        Rule("vae.decoder.norm.weight", "vae", "dec_norm.weight"),
        Rule("vae.decoder.norm.bias", "vae", "dec_norm.bias"),
        Rule("vae.decoder.to_pixels.weight", "vae", "predictor.weight"),
        Rule("vae.decoder.to_pixels.bias", "vae", "predictor.bias"),
    ]
    return r


def _transformed_shape(rule: Rule, shape: tuple[int, ...], cfg: OasisConfig) -> tuple[int, ...]:
    if rule.transform == "conv_to_linear":
        return (shape[0], math.prod(shape[1:]))
    if rule.transform == "mean_half":
        return (cfg.latent_channels, *shape[1:])
    return tuple(shape)


def nfd_shapes(cfg: OasisConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of the .nfd file the converter writes for `cfg` (= OasisModel(cfg).state_dict())."""
    up = {"dit": upstream_dit_shapes(cfg), "vae": upstream_vae_shapes(cfg)}
    return {r.nfd: _transformed_shape(r, up[r.source][r.key], cfg) for r in mapping(cfg)}


def _apply(rule: Rule, t, cfg: OasisConfig):
    """Upstream tensor (torch, float32) -> ours."""
    if rule.transform == "conv_to_linear":
        return t.reshape(t.shape[0], -1)
    if rule.transform == "mean_half":
        return t[: cfg.latent_channels]
    if rule.transform == "patch_order":
        p, C = cfg.patch_size, cfg.latent_channels
        return t.reshape(p, p, C, *t.shape[1:]).permute(2, 0, 1, *range(3, t.dim() + 2)).reshape(t.shape)
    return t


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoints


class _Checkpoint:
    """Names, shapes and dtypes of a .safetensors or .pt state dict; tensors read one at a time."""

    def __init__(self, path: str | os.PathLike, what: str):
        import torch

        self.path, self.what = os.fspath(path), what
        if not os.path.exists(self.path):
            raise ConversionError(f"{what} checkpoint {self.path}: no such file")
        ext = os.path.splitext(self.path)[1].lower()
        if ext == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                self._file = safe_open(self.path, framework="pt", device="cpu")
                self.keys = list(self._file.keys())
                self.shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self.keys}
                self.dtypes = {k: self._file.get_slice(k).get_dtype() for k in self.keys}
            except (SafetensorError, OSError) as e:
                raise ConversionError(f"{what} checkpoint {self.path}: not a readable safetensors file ({e})") from None
            self._get = self._file.get_tensor
        elif ext in (".pt", ".pth", ".ckpt", ".bin"):
            try:
                try:
                    sd = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # an old (non-zip) torch.save file cannot be memory-mapped
                    sd = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - pickle / zip errors of every kind: one message
                raise ConversionError(f"{what} checkpoint {self.path}: cannot load it as a weights-only torch "
                                      f"file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
                raise ConversionError(f"{what} checkpoint {self.path}: expected a flat state dict "
                                      "(tensor name -> tensor), as upstream's files are")
            self.keys = list(sd)
            self.shapes = {k: tuple(v.shape) for k, v in sd.items()}
            self.dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()}
            self._get = sd.__getitem__
        else:
            raise ConversionError(f"{what} checkpoint {self.path}: unknown extension {ext!r} "
                                  "(expected .safetensors or .pt)")

    def get(self, name: str):
        import torch

        return self._get(name).to(torch.float32)


_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64", "float32", "float16", "bfloat16", "float64"}


def _check(ck: _Checkpoint, expected: dict[str, tuple[int, ...]], optional: dict[str, tuple[int, ...]],
           cfg: OasisConfig, other: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor present with its shape and a float dtype; nothing else but `optional` names."""
    where = f"{ck.what} checkpoint {ck.path}"
    present = set(ck.keys)
    first_expected = next(iter(expected))
    if first_expected not in present and next(iter(other)) in present:
        flag = "--vae" if ck.what == "DiT" else "--dit"
        raise ConversionError(f"{where}: holds {next(iter(other))!r}, a tensor of the other file: were the DiT and "
                              f"VAE checkpoints swapped? (pass this one as {flag})")
    for name, shape in {**expected, **optional}.items():
        if name not in present:
            if name in expected:
                raise ConversionError(f"{where}: missing tensor {name!r} (expected shape {list(shape)} for "
                                      f"{cfg.name})")
            continue
        if ck.shapes[name] != tuple(shape):
            raise ConversionError(f"{where}: tensor {name!r} has shape {list(ck.shapes[name])}, expected "
                                  f"{list(shape)} for {cfg.name}")
        if ck.dtypes[name] not in _FLOAT_DTYPES:
            raise ConversionError(f"{where}: tensor {name!r} has dtype {ck.dtypes[name]}, expected a float type")
    extra = sorted(present - set(expected) - set(optional))
    if extra:
        raise ConversionError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all; not part "
                              f"of upstream's {cfg.name} {ck.what})")


def _check_rope(ck: _Checkpoint, optional: dict[str, tuple[int, ...]], cfg: OasisConfig) -> None:
    """The RoPE frequency tensors the file holds must be the ones the config implies (they fix head_dim and the
    RoPE settings, which the weight shapes alone cannot)."""
    import torch

    for name in optional:
        if name in ck.shapes:
            got = ck.get(name)
            want = upstream_rope_values(cfg, name)
            rtol = 1e-5 if ck.dtypes[name] in ("F32", "F64", "float32", "float64") else 1e-2  # 16-bit files round
            if not torch.allclose(got, want, rtol=rtol, atol=0):
                worst = int((got - want).abs().argmax())
                raise ConversionError(f"{ck.what} checkpoint {ck.path}: tensor {name!r} holds RoPE frequencies that "
                                      f"{cfg.name} does not imply (entry {worst}: {float(got[worst]):.6g}, expected "
                                      f"{float(want[worst]):.6g}); a different head count or RoPE setting?")


def _config(config: str | OasisConfig) -> OasisConfig:
    if isinstance(config, OasisConfig):
        return config
    if isinstance(config, str) and config.endswith(".json"):
        with open(config) as f:
            cfg = configs.from_json(f.read())
    else:
        cfg = configs.get(config)
    if not isinstance(cfg, OasisConfig):
        raise ConversionError(f"config {cfg.name!r} is not an Oasis config (known: {', '.join(configs.names('oasis'))})")
    return cfg


def convert(dit_path: str | os.PathLike, vae_path: str | os.PathLike, out: str | os.PathLike,
            config: str | OasisConfig = "oasis-500m", progress: Callable[[int, int], Any] | None = None) -> dict:
    """Convert upstream's DiT and VAE checkpoints to one .nfd file at `out`.

    `config`: an Oasis config name ("oasis-500m", "oasis-tiny"), a config .json file or an OasisConfig; it is
    what the file will say, and the checkpoints must match it exactly. Both checkpoints are checked completely
    before anything is written; the output appears only when complete (written beside it, then renamed).
    Returns a summary: output path, tensor and parameter counts, the upstream tensors not written and why.
    Raises ConversionError (a ValueError) naming the first problem.
    """
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nfd_rt.convert needs PyTorch: pip install 'nfd_rt[torch]'") from e
    from ..nfd_file import write_nfd_stream

    cfg = _config(config)
    dit_shapes, vae_shapes, rope = upstream_dit_shapes(cfg), upstream_vae_shapes(cfg), upstream_dit_rope(cfg)
    files = {"dit": _Checkpoint(dit_path, "DiT"), "vae": _Checkpoint(vae_path, "VAE")}
    _check(files["dit"], dit_shapes, rope, cfg, vae_shapes)
    _check(files["vae"], vae_shapes, {}, cfg, dit_shapes)
    _check_rope(files["dit"], rope, cfg)

    rules = {r.nfd: r for r in mapping(cfg)}
    shapes = nfd_shapes(cfg)
    done = [0]

    def produce(name: str):
        rule = rules[name]
        t = _apply(rule, files[rule.source].get(rule.key), cfg)
        done[0] += 1
        if progress is not None:
            progress(done[0], len(rules))
        return t.contiguous().numpy()

    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".nfd-convert-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write_nfd_stream(shapes, produce, cfg, tmp)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    rope_present = sorted(k for k in rope if k in files["dit"].shapes)
    return {
        "output": out,
        "config": cfg.name,
        "tensors": len(shapes),
        "parameters": sum(math.prod(s) for s in shapes.values()),
        "not_written": {
            **{k: "RoPE frequencies: defined by the config (checked against it)" for k in rope_present},
            "quant_conv (rows latent_channels..)": "the posterior log-variance: inference uses the mean only",
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Test fixtures: random weights in the upstream layout


def random_upstream_state_dicts(cfg: OasisConfig, seed: int = 0, rope: str = "safetensors") -> tuple[dict, dict]:
    """Random (DiT, VAE) state dicts in upstream's exact layout for `cfg` (float32 torch tensors).

    Values: normal / sqrt(fan_in) weights, small biases, LayerNorm affine near identity (a scale a forward pass
    survives; not upstream's init). rope: "safetensors" adds the two RoPE tensors a safetensors `save_model` of
    upstream's DiT keeps (blocks.0.s_attn / blocks.0.t_attn), "all" every name a `torch.save(state_dict)` has,
    "none" none of them.
    """
    import torch

    if rope not in ("safetensors", "all", "none"):
        raise ValueError(f"rope must be 'safetensors', 'all' or 'none', got {rope!r}")
    g = torch.Generator().manual_seed(seed)

    def draw(name: str, shape: tuple[int, ...]):
        if len(shape) == 1 and "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            return base + 0.1 * torch.randn(shape, generator=g)
        if len(shape) == 1:
            return 0.02 * torch.randn(shape, generator=g)
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))

    dit = {k: draw(k, s) for k, s in upstream_dit_shapes(cfg).items()}
    vae = {k: draw(k, s) for k, s in upstream_vae_shapes(cfg).items()}
    names = {"safetensors": ["blocks.0.s_attn.rotary_emb.freqs", "blocks.0.t_attn.rotary_emb.freqs"],
             "all": list(upstream_dit_rope(cfg)), "none": []}[rope]
    for k in names:
        dit[k] = upstream_rope_values(cfg, k)
    return dit, vae


def write_upstream_fixture(cfg: OasisConfig | str, dit_path: str | os.PathLike, vae_path: str | os.PathLike,
                           seed: int = 0, rope: str = "safetensors", dtype: str = "float32") -> None:
    """Write random weights in upstream's layout: `dit_path` and `vae_path` as .safetensors or .pt (by extension),
    tensors in `dtype` ("float32", "bfloat16", "float16"). See random_upstream_state_dicts."""
    import torch
    from safetensors.torch import save_file

    cfg = _config(cfg)
    dit, vae = random_upstream_state_dicts(cfg, seed=seed, rope=rope)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    for sd, path in ((dit, dit_path), (vae, vae_path)):
        sd = {k: v.to(dt).contiguous() for k, v in sd.items()}
        if os.fspath(path).endswith(".safetensors"):
            save_file(sd, os.fspath(path))
        else:
            torch.save(sd, os.fspath(path))
