"""`OnnxSession`: the frame-step API of `nfd_rt.Session` driving the exported ONNX graphs with ONNX Runtime.

    nfd-rt export-onnx m.nfd -o m_onnx/          (needs torch; writes dit_pass.onnx, vae_*.onnx, nfd_onnx.json)
    s = OnnxSession("m_onnx/", seed=0)           (needs only numpy + onnxruntime)
    s.reset(); frame = s.step(action)

It is the host loop of `nfd_onnx.json` written out in Python (docs/onnx.md): the same noise stream
(`nfd_rt.rng`), the same ring of cache slots and the same schedule as `ReferenceSession`, so a seed gives the
same video as every other backend, within float32 tolerance. The KV cache lives in host (numpy) arrays for the
CPU execution provider; with the CUDA execution provider and PyTorch present it lives in CUDA memory (torch
tensors bound through ORT's IO binding), so no pass copies it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _checks, ring, rng
from .configs import NFDConfig

SPEC_NAME = "nfd_onnx.json"
SPEC_FORMAT = "nfd_rt-onnx"
SPEC_VERSION = 1


def timestep_features(t: float, dim: int) -> np.ndarray:
    """The DiT's sinusoidal timestep features, float64 angles as the reference: float32 [dim]."""
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    args = float(np.float32(t)) * 1000.0 * freqs
    return np.concatenate([np.cos(args), np.sin(args)]).astype(np.float32)


def rope_time(frame_index: int, dims: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of the RoPE time angles of frame `frame_index` (float64 angles): float32 [dims/2] each."""
    inv_freq = theta ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)
    a = float(frame_index) * inv_freq
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def slot_of_frame(cfg: NFDConfig, frame: int) -> int | None:
    """Cache slot frame `frame` is written to (nfd_rt.ring; a ring of `window` slots; None: not cached)."""
    return ring.slot_for(frame, cfg.sink_frames, cfg.window)


def valid_frames(cfg: NFDConfig, frame: int) -> int:
    """Filled cache slots when frame `frame` is generated. Under the ring's rule with `window` ring slots and no
    rewinds, they are always slots 0 .. n-1 and all visible, so the exported graph takes a count, not a list."""
    return min(frame, cfg.cache_frames if cfg.window > 0 else cfg.sink_frames)


def frame_noise(seed: int, frame: int, slots: Sequence[int], shape: tuple[int, ...]) -> list[np.ndarray]:
    """`rng.latent_noise(seed, frame, slot, shape)` for several slots in one vectorised Philox call, bit for bit
    (the per-call overhead of numpy is most of the cost at small latents)."""
    count = int(np.prod(shape))
    groups = (count + 3) // 4
    counter = np.zeros((len(slots), groups, 4), dtype=np.uint32)
    counter[:, :, 0] = np.arange(groups, dtype=np.uint32)
    counter[:, :, 1] = frame
    counter[:, :, 2] = np.asarray(slots, dtype=np.uint32)[:, None]
    words = rng.philox4x32_10(counter, rng.seed_to_key(seed))
    z0, z1 = rng.uniform_pair_to_normal(words[..., 0], words[..., 1])
    z2, z3 = rng.uniform_pair_to_normal(words[..., 2], words[..., 3])
    z = np.stack([z0, z1, z2, z3], axis=-1).reshape(len(slots), -1)[:, :count]
    return [zi.reshape(shape) for zi in z]


def load_spec(path: str | os.PathLike) -> tuple[dict, Path]:
    """Read and check nfd_onnx.json (path: the file or its folder). Returns (spec, folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / SPEC_NAME
    try:
        spec = json.loads(p.read_text())
    except OSError as e:
        raise ValueError(f"{p}: cannot read the ONNX export spec ({e.strerror}); export one with "
                         "`nfd-rt export-onnx MODEL.nfd -o DIR`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{p}: not an nfd_rt ONNX export spec (format {spec.get('format') if isinstance(spec, dict) else None!r})")
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"{p}: unknown spec version {spec.get('version')!r}; this nfd_rt reads {SPEC_VERSION}")
    for key in ("config", "files", "graphs"):
        if key not in spec:
            raise ValueError(f"{p}: spec has no {key!r}")
    return spec, p.parent


class OnnxSession:
    """Frame-step session over an ONNX export (a folder with nfd_onnx.json). Same methods as `nfd_rt.Session`.

    Args:
        path: the export folder (or its nfd_onnx.json).
        seed: noise seed (Philox), as `nfd_rt.Session`.
        providers: ONNX Runtime execution providers (names or (name, options) pairs); default: CUDA when
            onnxruntime-gpu sees a GPU, else CPU.
        threads: intra-op threads of the CPU execution provider (0 = ONNX Runtime's default).
    """

    def __init__(self, path: str | os.PathLike, seed: int = 0, providers: Sequence[str] | None = None,
                 threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("OnnxSession needs onnxruntime: pip install 'nfd_rt[onnx]'") from e
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        spec, folder = load_spec(path)
        self.spec = spec
        self._cfg = NFDConfig.from_dict(spec["config"])
        self.seed = _checks.seed(seed)
        avail = ort.get_available_providers()
        if providers is None:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in avail \
                else ["CPUExecutionProvider"]
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]  # name or (name, options)
        missing = [p for p in names if p not in avail]
        if missing:
            raise ValueError(f"execution provider(s) {missing} not available in this onnxruntime (has {avail})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def open_graph(name: str):
            file = spec["files"].get(name)
            if file is None:
                return None
            f = folder / file
            if not f.is_file():
                raise ValueError(f"{f}: missing (named by {folder / SPEC_NAME})")
            return ort.InferenceSession(str(f), sess_options=opts, providers=list(providers))

        self._dit = open_graph("dit_pass")
        self._dec = open_graph("vae_decoder")
        self._enc = open_graph("vae_encoder")
        if self._dit is None or self._dec is None:
            raise ValueError(f"{folder / SPEC_NAME}: the spec must name dit_pass and vae_decoder files")
        fixed = spec["graphs"]["dit_pass"]["inputs"][0]["shape"][0]
        if fixed != "batch" and fixed != 1:
            raise ValueError(f"{folder / SPEC_NAME}: this export has a fixed batch of {fixed}; OnnxSession steps one "
                             "world: export with batch=1 or a dynamic batch")
        self.providers = self._dit.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._uint8_out = self._dec.get_outputs()[0].type == "tensor(uint8)"
        cfg = self._cfg
        steps = cfg.num_steps
        self._t_features = [timestep_features(t, cfg.time_embed_dim)[None]
                            for t in list(cfg.schedule) + [cfg.context_noise]]
        self._cache = _make_cache(cfg, self.device)
        # Where the KV cache lives: "cuda" (torch tensors bound to the CUDA EP) or "host" (numpy arrays).
        self.cache_device = "cuda" if isinstance(self._cache, _TorchCudaCache) else "host"
        self._steps = steps
        self._rope = (-1, None, None)  # (frame index, cos, sin) of the last frame
        self.frame_index = 0
        self._closed = False

    # -- public API (same as nfd_rt.Session) -----------------------------------------------------------------
    @property
    def config(self) -> NFDConfig:
        return self._cfg

    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then write the given context frames (uint8 [T,H,W,3]) or latents into the cache."""
        self._check_open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        if frames is not None:
            f = _checks.frames(frames, self._cfg)
            if len(f) and self._enc is None:
                raise ValueError("this ONNX export has no vae_encoder.onnx: reset with latents instead of frames")
            # One frame a call: an export may have a fixed batch of 1.
            z = np.concatenate([self._enc.run(None, {"frames": f[j:j + 1]})[0] for j in range(len(f))]) \
                if len(f) else np.zeros((0,), np.float32)
        elif latents is not None:
            z = _checks.latents(latents, self._cfg)
        else:
            z = np.zeros((0,), np.float32)
        a = _checks.actions(actions, len(z), self._cfg)
        self._cache.clear()
        self.frame_index = 0
        for j in range(len(z)):
            self._write_cache(z[j], a[j], self._noise(self._steps)[0])
            self.frame_index += 1

    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame's latent (float32 [C, h, w]) for `action` and append it to the context."""
        self._check_open()
        a = _checks.action(action, self._cfg)
        start, write = self._noise(0, self._steps)  # the frame's two noise slots in one Philox call
        z = self._sample(a, start)
        self._write_cache(z, a, write)
        self.frame_index += 1
        return z

    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]."""
        return self.decode(self.step_latent(action))

    def decode(self, latent: Any) -> np.ndarray:
        """Decode one latent [C, h, w] to uint8 [H, W, 3]."""
        self._check_open()
        z = _checks.latents(latent, self._cfg)
        if z.shape[0] != 1:
            raise ValueError(f"decode takes one latent [C, h, w], got {z.shape[0]} latents")
        out = self._dec.run(None, {"latent": z})[0][0]
        if self._uint8_out:
            return out
        u = np.floor((out.astype(np.float32) + 1.0) * 127.5 + 0.5).clip(0, 255)
        return np.ascontiguousarray(u.astype(np.uint8).transpose(1, 2, 0))

    def close(self) -> None:
        self._closed = True
        self._cache = None

    def __enter__(self) -> "OnnxSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"frame_index={self.frame_index}"
        return f"nfd_rt.onnx_runtime.OnnxSession({self._cfg.name}, providers={self.providers}, {state})"

    # -- internals --------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    def _noise(self, *slots: int) -> list[np.ndarray]:
        cfg = self._cfg
        return frame_noise(self.seed, self.frame_index, slots, (cfg.latent_channels, cfg.latent_height,
                                                                cfg.latent_width))

    def _pass(self, x: np.ndarray, k: int, a: np.ndarray) -> np.ndarray:
        """One dit_pass of the current frame at schedule position k (k = num_steps: the cache-write pass)."""
        cfg, i = self._cfg, self.frame_index
        if self._rope[0] != i:
            self._rope = (i, *rope_time(i, cfg.rope_dims[0], cfg.rope_theta))
        _, cos, sin = self._rope
        feeds = {
            "latent": np.ascontiguousarray(x[None], np.float32),
            "t_features": self._t_features[k],
            "action": a[None],
            "rope_cos": cos[None],
            "rope_sin": sin[None],
            "valid_frames": np.array([valid_frames(cfg, i)], np.int64),
        }
        return self._cache.run(self._dit, feeds)

    def _sample(self, a: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Euler flow matching from t=1 (x: the Philox noise of step slot 0) along the schedule to t=0."""
        schedule = list(self._cfg.schedule) + [0.0]
        for k in range(self._steps):
            v = self._pass(x, k, a)
            # float32 arithmetic in the order of ReferenceSession: x + (t[k+1] - t[k]) * v.
            x = x + np.float32(schedule[k + 1] - schedule[k]) * v
        return x

    def _write_cache(self, z: np.ndarray, a: np.ndarray, noise: np.ndarray) -> None:
        """Cache-write pass: the finished latent noised to `context_noise` (noise: Philox step slot `num_steps`)."""
        cn = self._cfg.context_noise
        # float32 scalars rounded from float64, as torch does with ReferenceSession's Python floats.
        x = np.float32(1.0 - cn) * z + np.float32(cn) * noise
        self._pass(x, self._steps, a)
        self._cache.commit(slot_of_frame(self._cfg, self.frame_index))


def _make_cache(cfg: NFDConfig, device: str):
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return _TorchCudaCache(cfg)
        except ImportError:
            pass
    return _HostCache(cfg)


class _HostCache:
    """The K/V cache in numpy arrays; each pass feeds them and the host writes the new frame's K/V into its slot."""

    def __init__(self, cfg: NFDConfig):
        shape = (1, cfg.depth, cfg.num_heads, cfg.cache_frames, cfg.tokens_per_frame, cfg.head_dim)
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self._new = None

    def clear(self) -> None:
        self._new = None  # stale slots are never read: valid_frames masks them out

    def run(self, sess, feeds: dict) -> np.ndarray:
        velocity, k_new, v_new = sess.run(None, feeds | {"k_cache": self.k, "v_cache": self.v})
        self._new = (k_new, v_new)
        return velocity[0]

    def commit(self, slot: int | None) -> None:
        if slot is not None:
            self.k[:, :, :, slot] = self._new[0]
            self.v[:, :, :, slot] = self._new[1]


class _TorchCudaCache:
    """The K/V cache in CUDA memory (torch tensors) bound to ORT's CUDA EP by IO binding: no per-pass copies of
    the cache; the new K/V land in device buffers and one device-to-device copy puts them into their slot."""

    def __init__(self, cfg: NFDConfig):
        import torch

        self.torch = torch
        shape = (1, cfg.depth, cfg.num_heads, cfg.cache_frames, cfg.tokens_per_frame, cfg.head_dim)
        dev = torch.device("cuda")
        self.k = torch.zeros(shape, device=dev)
        self.v = torch.zeros(shape, device=dev)
        new_shape = (1, cfg.depth, cfg.num_heads, cfg.tokens_per_frame, cfg.head_dim)
        self.k_new = torch.empty(new_shape, device=dev)
        self.v_new = torch.empty(new_shape, device=dev)
        self.vel = torch.empty((1, cfg.latent_channels, cfg.latent_height, cfg.latent_width), device=dev)

    def clear(self) -> None:
        pass

    def _bind(self, binding, name: str, t, is_input: bool) -> None:
        f = binding.bind_input if is_input else binding.bind_output
        f(name, "cuda", t.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())

    def run(self, sess, feeds: dict) -> np.ndarray:
        torch = self.torch
        binding = sess.io_binding()
        for name, arr in feeds.items():  # the small per-pass inputs: ORT copies them to the device
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        self._bind(binding, "k_cache", self.k, True)
        self._bind(binding, "v_cache", self.v, True)
        self._bind(binding, "velocity", self.vel, False)
        self._bind(binding, "k_new", self.k_new, False)
        self._bind(binding, "v_new", self.v_new, False)
        torch.cuda.synchronize()  # commit()'s copies ran on torch's stream; ORT runs on its own
        sess.run_with_iobinding(binding)  # returns when ORT's stream is done (synchronised by default)
        return self.vel[0].cpu().numpy()

    def commit(self, slot: int | None) -> None:
        if slot is not None:
            self.k[:, :, :, slot].copy_(self.k_new)
            self.v[:, :, :, slot].copy_(self.v_new)
