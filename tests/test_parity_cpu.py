"""C++ Session on the CPU against ReferenceSession (the PyTorch oracle) on `tiny` (window 8, 1 sink frame)."""

import numpy as np
import pytest

import nfd_rt
from nfd_rt import _checks
from nfd_rt.export import save
from nfd_rt.reference import NFDModel, ReferenceSession

_core = pytest.importorskip("nfd_rt._core")

LATENT_TOL = 1e-4


class CoreSession(nfd_rt.Session):
    """nfd_rt.Session plus one call that returns the latent and the decoded frame of the same step."""

    def step_both(self, action):
        return self._open().step(_checks.action(action, self._cfg), True)


@pytest.fixture(scope="module")
def model():
    cfg = nfd_rt.configs.get("tiny").replace(window=8, sink_frames=1)
    return NFDModel(cfg, init_seed=0)


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("nfd") / "tiny.nfd"
    save(model, path)
    return path


@pytest.fixture
def make_session(model_path):
    return lambda seed=0: CoreSession(model_path, device="cpu", seed=seed)


def actions(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def frames_close(a, b):
    """Fraction of uint8 values within one level."""
    return np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1)


def test_rollout_64_frames(model, make_session):
    cfg = model.cfg
    s, r = make_session(seed=3), ReferenceSession(model, seed=3)
    acts = actions(64, cfg.action_dim)
    worst, close = 0.0, []
    for i, a in enumerate(acts):
        z, frame = s.step_both(a)
        zr = r.step_latent(a)
        worst = max(worst, float(np.abs(z - zr).max()))
        close.append(frames_close(frame, r.decode(zr)))
        assert s.frame_index == r.frame_index == i + 1
    print(f"max |latent - reference| over 64 frames: {worst:.3g}; worst frame within 1 level: {min(close):.5f}")
    assert worst <= LATENT_TOL
    assert np.mean(close) >= 0.999


def test_reset_with_frames_and_latents(model, make_session):
    cfg = model.cfg
    rng = np.random.default_rng(1)
    ctx = rng.integers(0, 256, (3, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8)
    ctx_actions = actions(3, cfg.action_dim, seed=2)
    acts = actions(12, cfg.action_dim, seed=4)
    s, r = make_session(seed=7), ReferenceSession(model, seed=7)
    for _ in range(2):  # a second reset must forget the first rollout completely
        s.reset(frames=ctx, actions=ctx_actions)
        r.reset(frames=ctx, actions=ctx_actions)
        assert s.frame_index == r.frame_index == 3
        for a in acts:
            assert np.abs(s.step_latent(a) - r.step_latent(a)).max() <= LATENT_TOL
    lat = rng.standard_normal((2, cfg.latent_channels, cfg.latent_height, cfg.latent_width)).astype(np.float32)
    s.reset(latents=lat)
    r.reset(latents=lat)
    for a in acts[:10]:
        assert np.abs(s.step_latent(a) - r.step_latent(a)).max() <= LATENT_TOL


def test_decode_matches_reference(model, make_session):
    cfg = model.cfg
    z = np.random.default_rng(5).standard_normal((cfg.latent_channels, cfg.latent_height, cfg.latent_width))
    z = z.astype(np.float32)
    s, r = make_session(), ReferenceSession(model)
    assert frames_close(s.decode(z), r.decode(z)) >= 0.999
    assert s.frame_index == 0  # decode does not touch the session state


def test_same_seed_same_video_and_reset_replays(model, make_session):
    acts = actions(10, model.cfg.action_dim, seed=9)
    a, b, c = make_session(seed=11), make_session(seed=11), make_session(seed=12)
    za = [a.step_latent(x) for x in acts]
    zb = [b.step_latent(x) for x in acts]
    zc = [c.step_latent(x) for x in acts]
    assert all(np.array_equal(x, y) for x, y in zip(za, zb))
    assert not np.allclose(za[0], zc[0])
    a.reset()
    assert a.frame_index == 0
    assert all(np.array_equal(a.step_latent(x), y) for x, y in zip(acts, za))


def test_causality(model, make_session):
    """Changing the action of frame 5 leaves frames 0..4 identical and changes frame 5 and later ones."""
    acts = actions(8, model.cfg.action_dim, seed=13)
    other = acts.copy()
    other[5] += 1.0
    s1, s2 = make_session(), make_session()
    z1 = [s1.step_latent(x) for x in acts]
    z2 = [s2.step_latent(x) for x in other]
    for i in range(5):
        assert np.array_equal(z1[i], z2[i])
    for i in range(5, 8):
        assert np.abs(z1[i] - z2[i]).max() > 1e-3


def test_errors_leave_session_usable(model, make_session):
    cfg = model.cfg
    acts = actions(4, cfg.action_dim, seed=21)
    s, r = make_session(), ReferenceSession(model)
    s.step_latent(acts[0])
    r.step_latent(acts[0])
    bad = acts[1].copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        s.step_latent(bad)
    bad[2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        s.reset(latents=np.zeros((1, cfg.latent_channels, cfg.latent_height, cfg.latent_width), np.float32),
                actions=bad[None])
    assert s.frame_index == 1
    for a in acts[1:]:
        assert np.abs(s.step_latent(a) - r.step_latent(a)).max() <= LATENT_TOL


def test_memory_accounting(model, make_session):
    cfg = model.cfg
    s = make_session()
    kv = s._s.kv_cache_bytes()
    # K and V per layer: (sink + window + 1 slots) x N tokens x hidden, fp32.
    assert kv == 2 * cfg.depth * (cfg.cache_frames + 1) * cfg.tokens_per_frame * cfg.hidden_size * 4
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert weights + kv < s._s.memory_bytes() < 2 * (weights + kv) + (8 << 20)


def test_bad_file_and_options(tmp_path):
    with pytest.raises((OSError, ValueError), match="missing.nfd"):
        nfd_rt.Session(tmp_path / "missing.nfd", device="cpu")
    with pytest.raises(ValueError, match="tpu"):
        nfd_rt.Session(tmp_path / "missing.nfd", device="tpu")


@pytest.mark.parametrize("window,sink", [(2, 0), (0, 2), (3, 2)])
def test_other_cache_shapes(window, sink, tmp_path):
    cfg = nfd_rt.configs.get("tiny").replace(window=window, sink_frames=sink)
    m = NFDModel(cfg, init_seed=1)
    save(m, tmp_path / "m.nfd")
    s, r = CoreSession(tmp_path / "m.nfd", device="cpu", seed=5), ReferenceSession(m, seed=5)
    for a in actions(10, cfg.action_dim, seed=window):
        assert np.abs(s.step_latent(a) - r.step_latent(a)).max() <= LATENT_TOL


@pytest.mark.cuda
def test_cuda_float32_session_matches_cpu_over_64_frames(model_path, model):
    """The CPU backend is the oracle of the CUDA backend: fp32 over 64 frames with the window rolling."""
    acts = actions(64, model.cfg.action_dim, seed=3)
    cpu = CoreSession(model_path, device="cpu", seed=1)
    gpu = CoreSession(model_path, device="cuda", dtype="float32", seed=1)
    worst = 0.0
    for a in acts:
        z_cpu, f_cpu = cpu.step_both(a)
        z_gpu, f_gpu = gpu.step_both(a)
        worst = max(worst, float(np.abs(z_cpu - z_gpu).max()))
        assert np.mean(np.abs(f_cpu.astype(int) - f_gpu.astype(int)) <= 1) >= 0.999
    print(f"cuda fp32 vs cpu: max latent error over 64 frames {worst:.3g}")
    assert worst <= 1e-3


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_frames_psnr(model_path, model, dtype):
    """bf16/fp16 frames against fp32 frames of the same seed: PSNR >= 35 dB over 16 frames."""
    acts = actions(16, model.cfg.action_dim, seed=4)
    ref = CoreSession(model_path, device="cuda", dtype="float32", seed=2)
    half = CoreSession(model_path, device="cuda", dtype=dtype, seed=2)
    values = [psnr(ref.step(a), half.step(a)) for a in acts]
    print(f"cuda {dtype} vs fp32 PSNR: min {min(values):.1f} dB, mean {np.mean(values):.1f} dB")
    assert min(values) >= 35.0


@pytest.mark.cuda
def test_cuda_graph_replay_equals_direct_execution(model_path, model):
    """The captured whole-frame graph replays exactly what running the ops one by one computes."""
    acts = actions(12, model.cfg.action_dim, seed=5)
    graph = CoreSession(model_path, device="cuda", dtype="bfloat16", seed=3, cuda_graphs=True)
    direct = CoreSession(model_path, device="cuda", dtype="bfloat16", seed=3, cuda_graphs=False)
    graph.reset(latents=np.zeros((2, 4, 8, 8), np.float32))
    direct.reset(latents=np.zeros((2, 4, 8, 8), np.float32))
    for i, a in enumerate(acts):
        if i % 3 == 2:  # alternate the two graphs (with and without decode)
            assert np.array_equal(graph.step_latent(a), direct.step_latent(a))
        else:
            zg, fg = graph.step_both(a)
            zd, fd = direct.step_both(a)
            assert np.array_equal(zg, zd) and np.array_equal(fg, fd)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["ours", "simt", "flashinfer"])
def test_cuda_attention_implementations(impl, tmp_path, monkeypatch):
    """Each attention kernel behind the CUDA op (NFD_RT_ATTENTION) in a bf16 session with graphs, through the
    cache filling and the window rolling: frames against the fp32 session (PSNR >= 35 dB), and the session reports
    the kernel that ran. head_dim 64: the size FlashInfer is built for."""
    if impl == "flashinfer" and not _core.cuda_build_info()["flashinfer"]:
        pytest.skip("built without FlashInfer (CMake -DNFD_RT_FLASHINFER=ON)")
    cfg = nfd_rt.configs.get("tiny").replace(hidden_size=128, num_heads=2, rope_dims=(16, 24, 24), window=3,
                                             sink_frames=1)
    save(NFDModel(cfg, init_seed=2), tmp_path / "m.nfd")
    ref = CoreSession(tmp_path / "m.nfd", device="cuda", dtype="float32", seed=7)
    monkeypatch.setenv("NFD_RT_ATTENTION", impl)
    _core.clear_kernels_used()
    half = CoreSession(tmp_path / "m.nfd", device="cuda", dtype="bfloat16", seed=7)
    values = [psnr(ref.step(a), half.step(a)) for a in actions(10, cfg.action_dim, seed=8)]  # 10 > 1 + 3 + 1
    ran = {k: v for k, v in _core.kernels_used().items() if k.startswith("attention bf16")}
    print(f"{impl}: PSNR min {min(values):.1f} dB; {ran}")
    assert min(values) >= 35.0
    assert ran and next(iter(ran.values())).startswith({"ours": "ours: mma", "simt": "simt", "flashinfer": "flashinfer"}[impl])


def test_cuda_build_info_reports_the_vendor_kernels():
    info = _core.cuda_build_info()
    assert set(info) == {"cuda", "flashinfer", "cublaslt", "cublaslt_status"}
    assert isinstance(info["cublaslt_status"], str) and info["cublaslt_status"]
    if not info["cuda"]:
        assert not info["flashinfer"] and not info["cublaslt"]
