"""One suite for every implementation of the frame-step API (nfd_rt.api.FrameSession), against the oracle.

The C++ runtime on the CPU, the ONNX export under ONNX Runtime and the static PyTorch baseline each give the
video of ReferenceSession (same seed, same Philox noise, same ring of cache slots) on `tiny` (window 8, 1 sink
frame) within the tolerance of their arithmetic, follow its reset and seed rules, and leave a session usable after
bad input. What only one implementation has stays in its own file (test_parity_cpu.py: decode, memory, CUDA;
test_onnx.py: the export itself; test_static_baseline.py: torch.compile).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference needs torch (the `torch` extra)")

import nfd_rt  # noqa: E402
from nfd_rt.api import FrameSession  # noqa: E402
from nfd_rt.export import save  # noqa: E402
from nfd_rt.reference import NFDModel, ReferenceSession  # noqa: E402
from nfd_rt.baselines.static import StaticSession  # noqa: E402


@dataclass
class Impl:
    name: str
    open: Callable  # (model, files, seed) -> session
    latent_tol: float  # max |latent - reference| (relative to max |reference| when `relative`)
    relative: bool = False
    frame_levels: int = 1  # max uint8 difference of a decoded frame
    min_within_one_level: float = 0.0  # or: at least this fraction of values within one level (then any max)
    context: bool = True  # reset with context frames / latents


def cpp(model, files, seed):
    return nfd_rt.Session(files.nfd(model), device="cpu", dtype="float32", seed=seed)


def onnxruntime(model, files, seed):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (the `onnx` or `test` extra)")
    from nfd_rt.onnx_runtime import OnnxSession

    return OnnxSession(files.onnx(model), seed=seed, providers=["CPUExecutionProvider"], threads=1)


def static(model, files, seed):
    return StaticSession(model, seed=seed)


IMPLS = [
    # The C++ runtime: fp32 in another order of operations (OpenBLAS, fused ops); frames within one level for
    # 99.9% of values (a value on a .5 boundary may round either way).
    Impl("cpp-cpu", cpp, 1e-4, min_within_one_level=0.999, frame_levels=255),
    Impl("onnxruntime", onnxruntime, 1e-4),
    Impl("torch-static", static, 1e-4, relative=True, context=False),
]
CONTEXT_IMPLS = [i for i in IMPLS if i.context]


class Files:
    """Each model written once per test session: a .nfd file and its ONNX export. The models are kept alive with
    their files: keyed by id() alone, a later model could reuse a collected one's id and get its files (a stale
    export of another config)."""

    def __init__(self, tmp_path_factory):
        self.tmp, self.done, self.models = tmp_path_factory, {}, []

    def nfd(self, model):
        key = ("nfd", id(model))
        if key not in self.done:
            self.models.append(model)
            self.done[key] = self.tmp.mktemp("nfd") / "m.nfd"
            save(model, self.done[key])
        return self.done[key]

    def onnx(self, model):
        key = ("onnx", id(model))
        if key not in self.done:
            out = self.tmp.mktemp("onnx")
            r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "export-onnx", str(self.nfd(model)), "-o",
                                str(out)], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            self.done[key] = out
        return self.done[key]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tiny_model):  # conftest.py's tiny model (window 8, 1 sink frame, init_seed 0)
    return tiny_model


def actions(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def latent_error(impl: Impl, z, zr) -> float:
    err = float(np.abs(z - zr).max())
    return err / float(np.abs(zr).max()) if impl.relative else err


def check_frame(impl: Impl, f, fr) -> None:
    assert f.shape == fr.shape and f.dtype == np.uint8
    d = np.abs(f.astype(np.int16) - fr.astype(np.int16))
    assert int(d.max()) <= impl.frame_levels
    assert np.mean(d <= 1) >= impl.min_within_one_level


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_implements_the_protocol(impl, model, files):
    s = impl.open(model, files, 0)
    assert isinstance(s, FrameSession)
    assert isinstance(ReferenceSession(model), FrameSession)
    assert s.config.to_json() == model.cfg.to_json() and s.frame_index == 0
    with s:
        s.step(np.zeros(model.cfg.action_dim, np.float32))
        assert s.frame_index == 1


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_rollout_64_frames_matches_reference(impl, model, files):
    """64 frames with the window (8 + 1 sink) rolling: latents and decoded frames against the reference."""
    s, r = impl.open(model, files, 3), ReferenceSession(model, seed=3)
    worst = 0.0
    for i, a in enumerate(actions(64, model.cfg.action_dim)):
        if hasattr(s, "decode"):  # every frame's latent, and its decoded frame
            z, zr = s.step_latent(a), r.step_latent(a)
            worst = max(worst, latent_error(impl, z, zr))
            check_frame(impl, s.decode(z), r.decode(zr))
        elif i % 8 == 7:  # a session without decode: the frame of step() every 8th frame
            check_frame(impl, s.step(a), r.decode(r.step_latent(a)))
        else:
            z, zr = s.step_latent(a), r.step_latent(a)
            worst = max(worst, latent_error(impl, z, zr))
        assert s.frame_index == r.frame_index == i + 1
    print(f"{impl.name} vs reference over 64 frames: max latent error {worst:.3g}")
    assert worst <= impl.latent_tol


@pytest.mark.parametrize("impl", CONTEXT_IMPLS, ids=lambda i: i.name)
def test_reset_with_frames_and_latents(impl, model, files):
    cfg = model.cfg
    rng = np.random.default_rng(1)
    ctx = rng.integers(0, 256, (3, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8)
    ctx_actions = actions(3, cfg.action_dim, seed=2)
    acts = actions(12, cfg.action_dim, seed=4)
    s, r = impl.open(model, files, 7), ReferenceSession(model, seed=7)
    for _ in range(2):  # a second reset must forget the first rollout completely
        s.reset(frames=ctx, actions=ctx_actions)
        r.reset(frames=ctx, actions=ctx_actions)
        assert s.frame_index == r.frame_index == 3
        for a in acts:
            assert latent_error(impl, s.step_latent(a), r.step_latent(a)) <= impl.latent_tol
    lat = rng.standard_normal((2, cfg.latent_channels, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    s.reset(latents=lat)
    r.reset(latents=lat)
    for a in acts[:10]:
        assert latent_error(impl, s.step_latent(a), r.step_latent(a)) <= impl.latent_tol


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_same_seed_same_video_and_reset_replays(impl, model, files):
    acts = actions(10, model.cfg.action_dim, seed=9)
    a, b, c = impl.open(model, files, 11), impl.open(model, files, 11), impl.open(model, files, 12)
    za = [a.step_latent(x) for x in acts]
    zb = [b.step_latent(x) for x in acts]
    zc = [c.step_latent(x) for x in acts]
    assert all(np.array_equal(x, y) for x, y in zip(za, zb))
    assert not np.allclose(za[0], zc[0])
    a.reset()
    assert a.frame_index == 0
    assert all(np.array_equal(a.step_latent(x), y) for x, y in zip(acts, za))


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_causality(impl, model, files):
    """Changing the action of frame 5 leaves frames 0..4 identical and changes frame 5 and later ones."""
    acts = actions(8, model.cfg.action_dim, seed=13)
    other = acts.copy()
    other[5] += 1.0
    s1, s2 = impl.open(model, files, 0), impl.open(model, files, 0)
    z1 = [s1.step_latent(x) for x in acts]
    z2 = [s2.step_latent(x) for x in other]
    for i in range(5):
        assert np.array_equal(z1[i], z2[i])
    for i in range(5, 8):
        assert np.abs(z1[i] - z2[i]).max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_bad_action_is_refused_and_the_session_stays_usable(impl, model, files):
    cfg = model.cfg
    acts = actions(4, cfg.action_dim, seed=21)
    s, r = impl.open(model, files, 0), ReferenceSession(model)
    s.step_latent(acts[0])
    r.step_latent(acts[0])
    bad = acts[1].copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        s.step_latent(bad)
    with pytest.raises(ValueError, match="action"):
        s.step_latent(np.zeros(cfg.action_dim + 1, np.float32))
    if impl.context:
        bad[2] = np.inf
        with pytest.raises(ValueError, match="NaN or inf"):
            s.reset(latents=np.zeros((1, cfg.latent_channels, cfg.latent_height, cfg.latent_width), np.float32),
                    actions=bad[None])
    else:
        with pytest.raises(ValueError, match="context frames"):
            s.reset(frames=np.zeros((1, cfg.frame_height, cfg.frame_width, 3), np.uint8))
    assert s.frame_index == 1
    for a in acts[1:]:
        assert latent_error(impl, s.step_latent(a), r.step_latent(a)) <= impl.latent_tol


@pytest.mark.parametrize("changes", [{"window": 2, "sink_frames": 0}, {"window": 0, "sink_frames": 2},
                                     {"window": 3, "sink_frames": 2}, {"window": 3, "sink_frames": 2,
                                                                       "schedule": (1.0, 0.5)}],
                         ids=["ring-no-sinks", "sinks-no-ring", "both", "both-2-steps"])
@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_other_cache_shapes(impl, changes, files):
    """A ring without sinks, sinks without a ring (later frames never cached), both; past the window."""
    cfg = nfd_rt.configs.get("tiny").replace(**changes)
    m = NFDModel(cfg, init_seed=1)
    s, r = impl.open(m, files, 5), ReferenceSession(m, seed=5)
    for a in actions(cfg.cache_frames + 4, cfg.action_dim, seed=cfg.window):
        assert latent_error(impl, s.step_latent(a), r.step_latent(a)) <= impl.latent_tol
