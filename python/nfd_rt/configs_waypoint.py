"""Waypoint-1.5 configurations (`"architecture": "waypoint"` in a `.nfd` file's config JSON).

Waypoint-1.5 (Overworld) is an autoregressive rectified-flow DiT over per-latent-frame tokens with a streaming
TAEHV autoencoder: one 32-channel latent at 1/16 of the frame size stands for 4 video frames. docs/waypoint.md
describes the family, where each number comes from (the public world_engine code and the published checkpoint's
key/shape table) and every difference between upstream and nfd_rt.

The cache policy is part of the config (`is_global`, `layer_window`, `layer_stride`, `sees`, `slot_for`): every
layer keeps the frames `j` with `j % stride == 0` and a frame `f` sees the kept frames `j` with
`0 < f - j < window`, plus itself. Local layers: stride 1, window `local_window` (16: the 15 previous frames and
the current one). Global layers: stride `global_stride`, window `global_window` (8 and 128: the multiples of 8
less than 128 frames back). No sink frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._config_base import ConfigBase

ARCHITECTURE = "waypoint"


@dataclass(frozen=True)
class TAEHVConfig:
    """The TAEHV autoencoder (madebyollin/taehv, the `taehv1_5` weights for Waypoint-1.5).

    Spatial factor `patch_size * 8` (a pixel (un)shuffle, then three 2x stages), temporal factor
    `2 ** sum(time_upscale)` frames per latent. Every stage has three memory blocks (fixed by the architecture).
    """

    patch_size: int = 2
    encoder_channels: int = 64
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_downscale: tuple[bool, bool, bool] = (True, True, False)  # encoder stages that halve the frame rate
    time_upscale: tuple[bool, bool, bool] = (False, True, True)  # decoder stages that double it

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 8

    @property
    def frames_per_latent(self) -> int:
        return 2 ** sum(bool(t) for t in self.time_upscale)

    def problems(self) -> list[str]:
        p = []
        if self.patch_size < 1 or self.encoder_channels < 1 or len(self.decoder_channels) != 4 or \
                any(c < 1 for c in self.decoder_channels):
            p.append(f"taehv sizes must be positive (decoder_channels: 4 entries), got {self}")
        if len(self.time_downscale) != 3 or len(self.time_upscale) != 3:
            p.append("taehv time_downscale and time_upscale need one entry per stage (3)")
        elif sum(map(bool, self.time_downscale)) != sum(map(bool, self.time_upscale)):
            p.append(f"taehv encoder time factor 2**{sum(map(bool, self.time_downscale))} differs from the decoder's "
                     f"2**{sum(map(bool, self.time_upscale))}")
        return p


@dataclass(frozen=True)
class WaypointConfig(ConfigBase):
    _kind, _nested = "Waypoint config", {"taehv": (TAEHVConfig, "Waypoint taehv config")}

    architecture: str = ARCHITECTURE
    name: str = "waypoint-tiny"
    # Frames. frame_* is the autoencoder's resolution; step() returns (and reset() takes) frames of output_*,
    # resized bilinearly (as upstream's auto_aspect_ratio does: 1280x720 <-> 1024x512) when the two differ.
    frame_height: int = 64
    frame_width: int = 128
    output_height: int = 72
    output_width: int = 128
    latent_channels: int = 8
    patch_size: int = 2
    # Transformer.
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_ratio: int = 4  # the block MLP and the control MLP; the noise MLP is always 4x (as upstream)
    noise_features: int = 64  # Fourier features of the noise level (sin half, cos half)
    value_residual: bool = True
    rope_theta: float = 10000.0
    rope_nyquist: float = 0.8  # highest spatial RoPE frequency: min(grid) * rope_nyquist / 2 cycles
    time_stride: int = 1  # RoPE time position per latent frame (upstream base_fps // latent fps)
    # Controls: [mouse dx, mouse dy, n_buttons multi-hot buttons, scroll], fused before the MLP of every
    # `control_period`-th layer (0, period, 2 period, ...).
    n_buttons: int = 5
    control_period: int = 3
    # Cache policy (see the module docstring). Layer l is global when (l - global_offset) % global_period == 0.
    local_window: int = 3
    global_window: int = 8
    global_stride: int = 2
    global_period: int = 2
    global_offset: int = -1
    # Sampler: Euler over sigmas (from 1 to 0), then the commit pass at sigma 0 writes the frame's K/V.
    sigmas: tuple[float, ...] = (1.0, 0.9, 0.75, 0.3, 0.0)
    taehv: TAEHVConfig = field(default_factory=lambda: TAEHVConfig(encoder_channels=8,
                                                                  decoder_channels=(16, 16, 8, 8)))

    def __post_init__(self) -> None:
        p = []
        if self.architecture != ARCHITECTURE:
            p.append(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        ints = {k: getattr(self, k) for k in ("frame_height", "frame_width", "output_height", "output_width",
                                              "latent_channels", "patch_size", "hidden_size", "depth", "num_heads",
                                              "num_kv_heads", "mlp_ratio", "noise_features", "time_stride",
                                              "n_buttons", "control_period", "local_window", "global_window",
                                              "global_stride", "global_period")}
        bad = [k for k, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            p.append("must be positive integers: " + ", ".join(f"{k}={ints[k]!r}" for k in bad))
            raise ValueError("invalid Waypoint config: " + "; ".join(p))
        if self.hidden_size % self.num_heads:
            p.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 8:
            p.append(f"head_dim {self.head_dim} must be divisible by 8 (RoPE: x, y, t parts of hd/8, hd/8, hd/4 pairs)")
        if self.num_heads % self.num_kv_heads:
            p.append(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads} (GQA)")
        if self.noise_features % 2:
            p.append(f"noise_features {self.noise_features} must be even")
        p += self.taehv.problems()
        f = self.taehv.spatial_factor
        if self.frame_height % f or self.frame_width % f:
            p.append(f"frame {self.frame_height}x{self.frame_width} is not divisible by the autoencoder factor {f}")
        elif self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            p.append(f"latent {self.latent_height}x{self.latent_width} is not divisible by patch_size "
                     f"{self.patch_size}")
        if self.global_window % self.global_stride:
            p.append(f"global_window {self.global_window} is not divisible by global_stride {self.global_stride}")
        s = tuple(self.sigmas)
        if len(s) < 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in s) or s[0] != 1.0 \
                or s[-1] != 0.0 or any(a <= b for a, b in zip(s, s[1:])):
            p.append(f"sigmas {self.sigmas} must fall strictly from 1.0 to 0.0")
        if not self.rope_theta > 0 or not self.rope_nyquist > 0:
            p.append("rope_theta and rope_nyquist must be > 0")
        if p:
            raise ValueError("invalid Waypoint config: " + "; ".join(p))

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_height(self) -> int:
        return self.frame_height // self.taehv.spatial_factor

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.taehv.spatial_factor

    @property
    def control_dim(self) -> int:
        """Length of one step's control vector: mouse dx, dy, the buttons, scroll."""
        return self.n_buttons + 3

    @property
    def action_dim(self) -> int:  # the name the shared input checks (nfd_rt._checks) use
        return self.control_dim

    @property
    def frames_per_latent(self) -> int:
        return self.taehv.frames_per_latent

    @property
    def frames_per_step(self) -> int:  # what nfd_rt.Session.step returns: one latent's frames
        return self.frames_per_latent

    @property
    def video_size(self) -> tuple[int, int]:
        return self.output_height, self.output_width

    @property
    def num_steps(self) -> int:
        """Euler steps per latent frame (the commit pass comes on top)."""
        return len(self.sigmas) - 1

    # The cache policy.
    def is_global(self, layer: int) -> bool:
        return (layer - self.global_offset) % self.global_period == 0

    def has_control_fusion(self, layer: int) -> bool:
        return layer % self.control_period == 0

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if self.is_global(i))

    @property
    def control_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if self.has_control_fusion(i))

    def layer_window(self, layer: int) -> int:
        return self.global_window if self.is_global(layer) else self.local_window

    def layer_stride(self, layer: int) -> int:
        return self.global_stride if self.is_global(layer) else 1

    def cache_slots(self, layer: int) -> int:
        """Ring slots of one layer (the frame being generated stays beside them)."""
        return self.layer_window(layer) // self.layer_stride(layer)

    def keeps(self, layer: int, frame: int) -> bool:
        """Whether the commit pass of `frame` stores its K/V in this layer's ring."""
        return frame % self.layer_stride(layer) == 0

    def sees(self, layer: int, frame: Any, other: Any) -> Any:
        """True where `frame` attends to committed `other` in this layer (ints or broadcasting tensors); a frame
        always attends to itself besides."""
        d = frame - other
        return (other % self.layer_stride(layer) == 0) & (d > 0) & (d < self.layer_window(layer))

    def slot_for(self, layer: int, frame: int) -> int | None:
        """Ring slot a kept frame is written to (None when the layer does not keep it)."""
        s = self.layer_stride(layer)
        return (frame // s) % self.cache_slots(layer) if frame % s == 0 else None

    # Serialisation (the `config` entry of a .nfd file).
def _waypoint_1_5_1b(name: str, frame: tuple[int, int], output: tuple[int, int]) -> WaypointConfig:
    """The published Waypoint-1.5-1B checkpoints (config.yaml + the FlashDreams/world_engine key table)."""
    return WaypointConfig(
        name=name, frame_height=frame[0], frame_width=frame[1], output_height=output[0], output_width=output[1],
        latent_channels=32, patch_size=2, hidden_size=2048, depth=24, num_heads=32, num_kv_heads=16, mlp_ratio=4,
        noise_features=512, value_residual=True, rope_theta=10000.0, rope_nyquist=0.8, time_stride=1,
        n_buttons=256, control_period=3, local_window=16, global_window=128, global_stride=8, global_period=4,
        global_offset=-1, sigmas=(1.0, 0.9, 0.75, 0.3, 0.0), taehv=TAEHVConfig())


CONFIGS: dict[str, WaypointConfig] = {
    "waypoint-tiny": WaypointConfig(),
    # 1280x720 frames <-> 1024x512 autoencoder frames -> 32x64 latents, patch 2 -> 16x32 = 512 tokens per frame.
    "waypoint-1.5-1b": _waypoint_1_5_1b("waypoint-1.5-1b", (512, 1024), (720, 1280)),
    # 640x360 <-> 512x256 -> 16x32 latents -> 8x16 = 128 tokens per frame.
    "waypoint-1.5-1b-360p": _waypoint_1_5_1b("waypoint-1.5-1b-360p", (256, 512), (360, 640)),
}


# The controls' buttons are key codes: Windows virtual-key codes, as Owl-Control (the recorder of Waypoint's training
# data, src/system/keycode.rs) stores them; e.g. 87 = W, 32 = space, 1 = the left mouse button. Browser key names
# (KeyboardEvent.code, what `nfd-rt serve`'s page sends, and what `nfd-rt play` names pygame's keys) -> key code.
# Our reading of those codes, not checked against a recording: the left and right Shift, Ctrl and Alt keys send
# the generic codes 16, 17, 18.
KEY_CODES: dict[str, int] = {
    **{f"Key{chr(c)}": c for c in range(ord("A"), ord("Z") + 1)},
    **{f"Digit{d}": 48 + d for d in range(10)},
    "MouseLeft": 1, "MouseRight": 2, "MouseMiddle": 4,
    "Backspace": 8, "Tab": 9, "Enter": 13, "ShiftLeft": 16, "ShiftRight": 16, "ControlLeft": 17,
    "ControlRight": 17, "AltLeft": 18, "AltRight": 18, "Escape": 27, "Space": 32,
    "ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40,
}


def keymap(cfg: WaypointConfig) -> tuple[dict[str, int], dict[str, Any]]:
    """The controls as `nfd-rt serve` and `nfd-rt play` take them: (key name -> index in the control vector, the
    pointer: {"dx": 0, "dy": 1, "scroll": n_buttons + 2, "scale": 1.0}). Button b is index 2 + b; key codes past
    the model's buttons are left out (waypoint-tiny's 5 buttons keep only the mouse buttons). The mouse enters as
    the movement since the previous step in pixels (scale 1: not calibrated against real weights)."""
    keys = {k: 2 + c for k, c in KEY_CODES.items() if c < cfg.n_buttons}
    return keys, {"dx": 0, "dy": 1, "scroll": cfg.n_buttons + 2, "scale": 1.0}


def config_from_dict(d: dict[str, Any]) -> WaypointConfig:  # nfd_rt.configs.from_json dispatches here
    return WaypointConfig.from_dict(d)


def names() -> list[str]:
    return list(CONFIGS)


def get(name: str) -> WaypointConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown Waypoint config {name!r}; known: {', '.join(CONFIGS)}") from None
