"""Named model configurations.

A config fully describes a model: the DiT, the VAE, the sampler and the KV-cache window. It is stored as JSON
in every `.nfd` file (`to_json` / `from_json`), so the C++ runtime reads the same fields by name.

Two architectures: `NFDConfig` (this project's NFD model; its JSON has no `architecture` field, which means
"nfd") and `OasisConfig` (Oasis-500M's family, `"architecture": "oasis"`; docs/oasis.md). The module-level
`from_json` / `from_dict` read either, dispatching on that field; `get(name)` knows every named config.
See docs/models.md for the reasoning behind the NFD dimensions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ._config_base import ConfigBase

if TYPE_CHECKING:
    from .configs_waypoint import WaypointConfig


@dataclass(frozen=True)
class VAEConfig:
    """Convolutional VAE, 8x spatial downsampling (len(channels) - 1 == 3 resolution changes)."""

    channels: tuple[int, ...] = (32, 32, 64, 64)  # per level, highest resolution first
    num_res_blocks: int = 1  # ResNet blocks per level
    norm_groups: int = 8  # GroupNorm groups (divides every entry of `channels`)
    norm_eps: float = 1e-6

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class NFDConfig(ConfigBase):
    _kind, _nested = "config", {"vae": (VAEConfig, "VAE config")}

    name: str = "tiny"
    # Frames and latents.
    frame_height: int = 64
    frame_width: int = 64
    latent_channels: int = 4
    patch_size: int = 2
    # DiT.
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    rope_dims: tuple[int, int, int] = (8, 12, 12)  # (time, height, width) parts of head_dim, each even
    rope_theta: float = 10000.0
    time_embed_dim: int = 256  # sinusoidal features of the timestep before the MLP
    action_dim: int = 8
    norm_eps: float = 1e-6
    # KV cache: a frame sees the `sink_frames` first frames, the `window` frames before it, and itself.
    window: int = 8
    sink_frames: int = 1
    # Sampler: Euler flow matching from t=1 through `schedule` to t=0, then one cache-write pass.
    schedule: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    context_noise: float = 0.02
    vae: VAEConfig = field(default_factory=VAEConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif sum(self.rope_dims) != self.head_dim:
            problems.append(f"rope_dims {self.rope_dims} must sum to head_dim {self.head_dim}")
        if any(d % 2 for d in self.rope_dims):
            problems.append(f"rope_dims {self.rope_dims} must all be even")
        ds = self.vae.downsample
        if self.frame_height % ds or self.frame_width % ds:
            problems.append(f"frame {self.frame_height}x{self.frame_width} is not divisible by the VAE factor {ds}")
        elif self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            problems.append(
                f"latent {self.latent_height}x{self.latent_width} is not divisible by patch_size {self.patch_size}"
            )
        if not self.schedule or self.schedule[0] != 1.0 or list(self.schedule) != sorted(self.schedule, reverse=True):
            problems.append(f"schedule {self.schedule} must start at 1.0 and decrease")
        elif self.schedule[-1] <= 0.0:
            problems.append(f"schedule {self.schedule} must stay above 0 (the last Euler step goes to t=0)")
        if not 0.0 <= self.context_noise < 1.0:
            problems.append(f"context_noise {self.context_noise} must be in [0, 1)")
        if self.window < 0 or self.sink_frames < 0:
            problems.append("window and sink_frames must be >= 0")
        if any(c % self.vae.norm_groups for c in self.vae.channels):
            problems.append(f"VAE channels {self.vae.channels} must be divisible by norm_groups {self.vae.norm_groups}")
        if self.action_dim < 1:
            problems.append("action_dim must be >= 1")
        if problems:
            raise ValueError("invalid NFD config: " + "; ".join(problems))

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_height(self) -> int:
        return self.frame_height // self.vae.downsample

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.vae.downsample

    @property
    def cache_frames(self) -> int:
        """Frames held in the KV cache: sink frames + rolling window (the current frame is not cached)."""
        return self.sink_frames + self.window

    @property
    def num_steps(self) -> int:
        return len(self.schedule)

    # Serialisation (the `config` entry of a .nfd file).
_CONFIGS: dict[str, NFDConfig] = {
    "tiny": NFDConfig(),
    # 384x224 frames -> 48x28 latents (8x VAE), patch 2 -> 24x14 = 336 tokens per frame, 32-frame context.
    "nfd-130m": NFDConfig(
        name="nfd-130m",
        frame_height=224,
        frame_width=384,
        latent_channels=16,
        patch_size=2,
        hidden_size=768,
        depth=12,
        num_heads=12,
        rope_dims=(16, 24, 24),
        action_dim=32,
        window=30,
        sink_frames=2,
        vae=VAEConfig(channels=(64, 128, 128, 256), num_res_blocks=1, norm_groups=32),
    ),
    "nfd-310m": NFDConfig(
        name="nfd-310m",
        frame_height=224,
        frame_width=384,
        latent_channels=16,
        patch_size=2,
        hidden_size=1024,
        depth=16,
        num_heads=16,
        rope_dims=(16, 24, 24),
        action_dim=32,
        window=30,
        sink_frames=2,
        vae=VAEConfig(channels=(64, 128, 128, 256), num_res_blocks=1, norm_groups=32),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Oasis (Oasis-500M: etched-ai/open-oasis). docs/oasis.md says where each number comes from.


def ddim_timesteps(steps: int, noise_levels: int = 1000) -> tuple[int, ...]:
    """The noise levels upstream's sampler (open-oasis generate.py) visits with `steps` DDIM steps, highest first.

    Upstream takes `linspace(-1, noise_levels - 1, steps + 1)` in float32 and truncates each entry to an integer
    level; entry 0 (-1) means "clean" (the last step goes to alpha_bar = 1), the others are the model's inputs.
    The float32 linspace is reproduced bit for bit (PyTorch's kernel: a float32 step, then start + step * i for
    the first half and end - step * (n - 1 - i) for the rest, each a fused multiply-add), so the levels equal
    upstream's for every step count, e.g. 10 -> (999, 899, ..., 99).
    """
    if int(steps) != steps or steps < 1 or steps >= noise_levels:
        raise ValueError(f"steps must be an integer in [1, {noise_levels}), got {steps!r}")
    steps = int(steps)
    start, end, n = -1.0, float(noise_levels - 1), steps + 1
    step = np.float32(np.float32(end) - np.float32(start)) / np.float32(steps)
    levels = []
    for i in range(n):
        if i < n // 2:
            v = np.float32(start + float(step) * i)  # exact product and sum in float64, one rounding: an FMA
        else:
            v = np.float32(end - float(step) * (n - 1 - i))
        levels.append(math.trunc(float(v)))
    return tuple(reversed(levels[1:]))


def sigmoid_alphas_cumprod(noise_levels: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                           max_beta: float = 0.999) -> np.ndarray:
    """alpha_bar[t] for t in [0, noise_levels) of upstream's sigmoid beta schedule, float32 [noise_levels].

    As open-oasis utils.py + generate.py compute it: in float64, s(x) = sigmoid((x (end - start) + start) / tau),
    g(x) = (sigmoid(end / tau) - s(x)) / (sigmoid(end / tau) - sigmoid(start / tau)) for x = t / noise_levels,
    t = 0..noise_levels (the two constant sigmoids are float32 scalars upstream, so they are rounded to float32
    here too); beta_t = clip(1 - g(t + 1) / g(t), 0, max_beta) (g(0) = 1); alpha_t = 1 - float32(beta_t) in
    float32; alpha_bar = the running product of the float32 alpha_t accumulated in float64, each entry rounded to
    float32. That is PyTorch's CPU cumprod bit for bit; upstream runs it on CUDA (a float32 scan), which differs
    by at most a few float32 ulps.
    """
    def sig(x: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

    x = np.linspace(0.0, noise_levels, noise_levels + 1, dtype=np.float64) / noise_levels
    v_start = float(np.float32(sig(start / tau)))
    v_end = float(np.float32(sig(end / tau)))
    g = (-sig((x * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    g = g / g[0]
    betas = np.clip(1.0 - g[1:] / g[:-1], 0.0, max_beta).astype(np.float32)
    alphas = np.float32(1.0) - betas
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


@dataclass(frozen=True)
class OasisVAEConfig:
    """The ViT VAE ("ViT-L/20 shallow encoder" for Oasis-500M): frames in patch_size^2 patches, one token each.

    Both halves are pre-LN ViT blocks (LayerNorm with affine, eps norm_eps; exact-erf GELU MLP of mlp_ratio x;
    attention with q/k/v biases and axial RoPE on the first 2 * rope_dim features of each head).
    """

    patch_size: int = 20
    encoder_dim: int = 1024
    encoder_depth: int = 6
    encoder_heads: int = 16
    decoder_dim: int = 1024
    decoder_depth: int = 12
    decoder_heads: int = 16
    mlp_ratio: int = 4
    norm_eps: float = 1e-6
    # Axial "pixel" RoPE: upstream's RotaryEmbedding(dim=rope_dim, freqs_for="pixel", max_freq=rope_max_freq);
    # rope_dim / 2 frequencies per axis, positions linspace(-1, 1, n) per axis. Upstream ties rope_dim to
    # head_dim // 4 and rope_max_freq to rows * cols of the token grid; both are stored so the file says it.
    rope_dim: int = 16
    rope_max_freq: float = 576.0
    scaling_factor: float = 0.07843137255  # DiT latent = encoder mean * scaling_factor

    @property
    def encoder_head_dim(self) -> int:
        return self.encoder_dim // self.encoder_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.decoder_dim // self.decoder_heads


def _default_oasis_timesteps() -> tuple[int, ...]:
    return ddim_timesteps(10, 1000)


@dataclass(frozen=True)
class OasisConfig(ConfigBase):
    """Oasis-500M's family: a DiT of spatial + causal temporal axial attention blocks over per-frame latents of a
    ViT VAE, DDIM v-prediction sampling over a 1000-level sigmoid beta schedule. Frame i's temporal attention
    sees the `max_frames - 1` frames before it (upstream's sliding window of max_frames frames)."""
    _kind, _nested = "Oasis config", {"vae": (OasisVAEConfig, "Oasis VAE config")}

    name: str = "oasis-500m"
    architecture: str = "oasis"
    # Frames and latents: a frame [H, W, 3] -> latent [latent_channels, H / vae.patch_size, W / vae.patch_size].
    frame_height: int = 360
    frame_width: int = 640
    latent_channels: int = 16
    patch_size: int = 2  # DiT patches of the latent -> (h / p) x (w / p) tokens a frame
    # DiT.
    hidden_size: int = 1024
    depth: int = 16
    num_heads: int = 16
    mlp_ratio: int = 4  # GELU (tanh approximation)
    time_embed_dim: int = 256  # sinusoidal features of the integer noise level (max period 10000)
    action_dim: int = 25
    norm_eps: float = 1e-6  # every LayerNorm of the DiT: no affine
    # Spatial RoPE: upstream's RotaryEmbedding(dim=spatial_rope_dim, freqs_for="pixel", max_freq=...) applied
    # axially (rows, then columns) over the whole head; spatial_rope_dim = head_dim / 2 upstream.
    spatial_rope_dim: int = 32
    spatial_rope_max_freq: float = 256.0
    # Temporal RoPE: "lang" frequencies theta^(-2j / head_dim) over the whole head, position = frame index.
    temporal_rope_theta: float = 10000.0
    # Context: a frame sees itself and the max_frames - 1 frames before it.
    max_frames: int = 32
    # Sampler: DDIM (eta 0) with v-prediction over `noise_levels` levels of the sigmoid beta schedule.
    beta_schedule: str = "sigmoid"
    noise_levels: int = 1000
    timesteps: tuple[int, ...] = field(default_factory=_default_oasis_timesteps)  # model inputs, highest first
    context_level: int = 14  # the noise level context frames are labelled with (upstream stabilization_level - 1)
    noise_clamp: float = 20.0  # the initial noise is clamped to [-noise_clamp, noise_clamp]
    vae: OasisVAEConfig = field(default_factory=OasisVAEConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.architecture != "oasis":
            problems.append(f"architecture must be 'oasis', got {self.architecture!r}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even (RoPE rotates pairs)")
        elif self.spatial_rope_dim < 2 or self.spatial_rope_dim % 2 or 2 * self.spatial_rope_dim > self.head_dim:
            problems.append(f"spatial_rope_dim {self.spatial_rope_dim} must be even, >= 2 and at most head_dim / 2 "
                            f"({self.head_dim // 2})")
        v = self.vae
        for what, dim, heads in (("encoder", v.encoder_dim, v.encoder_heads), ("decoder", v.decoder_dim, v.decoder_heads)):
            if heads < 1 or dim % heads:
                problems.append(f"VAE {what}_dim {dim} is not divisible by {what}_heads {heads}")
            elif v.rope_dim < 2 or v.rope_dim % 2 or 2 * v.rope_dim > dim // heads:
                problems.append(f"VAE rope_dim {v.rope_dim} must be even, >= 2 and at most half the {what} head_dim "
                                f"({dim // heads})")
        if v.patch_size < 1 or self.frame_height % v.patch_size or self.frame_width % v.patch_size:
            problems.append(f"frame {self.frame_height}x{self.frame_width} is not divisible by the VAE patch size "
                            f"{v.patch_size}")
        elif self.patch_size < 1 or self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            problems.append(f"latent {self.latent_height}x{self.latent_width} is not divisible by patch_size "
                            f"{self.patch_size}")
        if min(self.depth, v.encoder_depth, v.decoder_depth, self.mlp_ratio, v.mlp_ratio) < 1:
            problems.append("depths and MLP ratios must be >= 1")
        if self.beta_schedule != "sigmoid":
            problems.append(f"beta_schedule {self.beta_schedule!r} is unknown (known: 'sigmoid')")
        if self.noise_levels < 2:
            problems.append("noise_levels must be >= 2")
        ts = list(self.timesteps)
        if not ts or any(int(t) != t for t in ts) or ts != sorted(set(ts), reverse=True) \
                or ts[0] >= self.noise_levels or ts[-1] < 0:
            problems.append(f"timesteps {self.timesteps} must be distinct integer levels in [0, {self.noise_levels}), "
                            "highest first")
        if not 0 <= self.context_level < self.noise_levels:
            problems.append(f"context_level {self.context_level} must be in [0, {self.noise_levels})")
        if not self.noise_clamp > 0:
            problems.append(f"noise_clamp must be > 0, got {self.noise_clamp}")
        if self.max_frames < 1:
            problems.append("max_frames must be >= 1")
        if self.action_dim < 1:
            problems.append("action_dim must be >= 1")
        if self.time_embed_dim < 2 or self.time_embed_dim % 2:
            problems.append("time_embed_dim must be even and >= 2")
        if problems:
            raise ValueError("invalid Oasis config: " + "; ".join(problems))

    # Derived sizes (the names NFDConfig uses where the meaning is the same).
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_height(self) -> int:
        return self.frame_height // self.vae.patch_size

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.vae.patch_size

    @property
    def vae_grid(self) -> tuple[int, int]:
        """VAE token grid (rows, cols) of one frame: the latent's spatial size."""
        return self.latent_height, self.latent_width

    @property
    def vae_patch_dim(self) -> int:
        return 3 * self.vae.patch_size**2

    @property
    def window(self) -> int:
        """Earlier frames a frame's temporal attention sees (upstream: max_frames frames including itself)."""
        return self.max_frames - 1

    @property
    def sink_frames(self) -> int:
        return 0

    @property
    def cache_frames(self) -> int:
        """Frames held in the temporal K/V cache (the current frame is not cached)."""
        return self.max_frames - 1

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def passes_per_frame(self) -> int:
        """DiT passes of one frame over one frame's tokens: the DDIM steps + the cache-write pass."""
        return self.num_steps + 1

    def alphas_cumprod(self) -> np.ndarray:
        """float32 [noise_levels]: alpha_bar of every noise level (`sigmoid_alphas_cumprod`)."""
        return sigmoid_alphas_cumprod(self.noise_levels)

    # Serialisation (the `config` entry of a .nfd file).
_OASIS_CONFIGS: dict[str, OasisConfig] = {
    # Oasis-500M as etched-ai/open-oasis builds it: DiT-S/2 over 18 x 32 x 16 latents (144 tokens a frame),
    # ViT-L/20 VAE over 360 x 640 frames.
    "oasis-500m": OasisConfig(),
    # The same structure, small: tests and CPU experiments in milliseconds. 48 x 96 frames, VAE patches of 8 ->
    # latents 4 x 6 x 12, DiT patch 2 -> 3 x 6 = 18 tokens a frame; 3 DDIM steps (levels 999, 665, 332: a
    # step count whose linspace is not integral); a 6-frame window so the rolling window is cheap to reach.
    "oasis-tiny": OasisConfig(
        name="oasis-tiny",
        frame_height=48,
        frame_width=96,
        latent_channels=4,
        patch_size=2,
        hidden_size=64,
        depth=2,
        num_heads=4,
        spatial_rope_dim=8,
        max_frames=6,
        timesteps=ddim_timesteps(3, 1000),
        vae=OasisVAEConfig(patch_size=8, encoder_dim=64, encoder_depth=1, encoder_heads=4, decoder_dim=64,
                           decoder_depth=2, decoder_heads=4, rope_dim=4, rope_max_freq=72.0),
    ),
}

ModelConfig = Union[NFDConfig, OasisConfig, "WaypointConfig"]  # noqa: F821 (nfd_rt.configs_waypoint)
ARCHITECTURES = ("nfd", "oasis", "waypoint")


def _waypoint():
    """nfd_rt.configs_waypoint (imported when first needed: it imports this module)."""
    from . import configs_waypoint

    return configs_waypoint


def from_dict(d: dict[str, Any]) -> ModelConfig:
    """A config of any architecture from its dict: `architecture` absent or "nfd" -> NFDConfig, "oasis" ->
    OasisConfig. (NFDConfig.to_json writes no architecture field: files from before Oasis stay byte-identical.)"""
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a JSON object, got {type(d).__name__}")
    arch = d.get("architecture", "nfd")
    if arch == "nfd":
        return NFDConfig.from_dict({k: v for k, v in d.items() if k != "architecture"})
    if arch == "oasis":
        return OasisConfig.from_dict(d)
    if arch == "waypoint":
        return _waypoint().config_from_dict(d)
    raise ValueError(f"unknown architecture {arch!r}; this nfd_rt knows: {', '.join(ARCHITECTURES)}")


def from_json(text: str) -> ModelConfig:
    """A config of any architecture from the JSON of a .nfd file's `config` entry (see `from_dict`)."""
    return from_dict(json.loads(text))


def names(architecture: str = "nfd") -> list[str]:
    """Named configs of one architecture ("nfd": tiny, nfd-130m, nfd-310m; "oasis": oasis-500m, oasis-tiny;
    "waypoint": waypoint-1.5-1b, waypoint-1.5-1b-360p, waypoint-tiny) or of all ("all")."""
    table = {"nfd": list(_CONFIGS), "oasis": list(_OASIS_CONFIGS), "waypoint": _waypoint().names()}
    if architecture == "all":
        return table["nfd"] + table["oasis"] + table["waypoint"]
    if architecture not in table:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}, all")
    return table[architecture]


def get(name: str) -> ModelConfig:
    """Return the named config ("tiny", "nfd-130m", "nfd-310m", "oasis-500m", "oasis-tiny", "waypoint-tiny", ...)."""
    if name in _CONFIGS:
        return _CONFIGS[name]
    if name in _OASIS_CONFIGS:
        return _OASIS_CONFIGS[name]
    if name in _waypoint().names():
        return _waypoint().get(name)
    raise ValueError(f"unknown config {name!r}; known: {', '.join(names('all'))}") from None
