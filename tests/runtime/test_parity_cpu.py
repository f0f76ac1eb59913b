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
def model(tiny_model):  # conftest.py's tiny model (window 8, 1 sink frame, init_seed 0)
    return tiny_model


@pytest.fixture(scope="module")
def model_path(tiny_nfd):  # conftest.py's tiny model as a .nfd file
    return tiny_nfd


@pytest.fixture
def make_session(model_path):
    return lambda seed=0: CoreSession(model_path, device="cpu", dtype="float32", seed=seed)


def actions(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def frames_close(a, b):
    """Fraction of uint8 values within one level."""
    return np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1)


def test_decode_matches_reference(model, make_session):
    cfg = model.cfg
    z = np.random.default_rng(5).standard_normal((cfg.latent_channels, cfg.latent_height, cfg.latent_width))
    z = z.astype(np.float32)
    s, r = make_session(), ReferenceSession(model)
    assert frames_close(s.decode(z), r.decode(z)) >= 0.999
    assert s.frame_index == 0  # decode does not touch the session state


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


@pytest.mark.cuda
def test_cuda_float32_session_matches_cpu_over_64_frames(model_path, model):
    """The CPU backend is the oracle of the CUDA backend: fp32 over 64 frames with the window rolling."""
    acts = actions(64, model.cfg.action_dim, seed=3)
    cpu = CoreSession(model_path, device="cpu", dtype="float32", seed=1)
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
@pytest.mark.parametrize("impl", ["ours", "simt", "flashinfer", "flashinfer-sm90", "cudnn"])
def test_cuda_attention_implementations(impl, tmp_path, monkeypatch):
    """Each attention kernel behind the CUDA op (NFD_RT_ATTENTION) in a bf16 session with graphs, through the
    cache filling and the window rolling: frames against the fp32 session (PSNR >= 35 dB), and the session reports
    the kernel that ran. head_dim 64: the size FlashInfer is built for. cuDNN runs every frame here (the visible
    slots are the cache's prefix while it fills, and all of it once full)."""
    if impl == "flashinfer" and not _core.cuda_build_info()["flashinfer"]:
        pytest.skip("built without FlashInfer (CMake -DNFD_RT_FLASHINFER=ON)")
    if impl == "cudnn" and not _core.cuda_build_info()["cudnn"]:
        pytest.skip("built without cuDNN attention (cudnn-frontend headers not found at build time)")
    if impl == "flashinfer-sm90":
        if not _core.cuda_build_info()["flashinfer_sm90"]:
            pytest.skip("built without FlashInfer's Hopper attention (CMake -DNFD_RT_FLASHINFER=ON with sm_90)")
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("FlashInfer's Hopper attention runs on compute capability 9.0 only")
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
    assert ran and next(iter(ran.values())).startswith(
        {"ours": "ours: mma", "simt": "simt", "flashinfer": "flashinfer", "flashinfer-sm90": "flashinfer-sm90",
         "cudnn": "cudnn"}[impl])


def test_cuda_build_info_reports_the_vendor_kernels():
    info = _core.cuda_build_info()
    assert set(info) == {"cuda", "flashinfer", "flashinfer_sm90", "cublaslt", "cublaslt_status", "cudnn",
                         "cudnn_status"}
    assert isinstance(info["cublaslt_status"], str) and info["cublaslt_status"]
    assert isinstance(info["cudnn_status"], str) and info["cudnn_status"]
    assert info["flashinfer"] or not info["flashinfer_sm90"]  # the Hopper attention comes with FlashInfer only
    if not info["cuda"]:
        assert not info["flashinfer"] and not info["flashinfer_sm90"] and not info["cublaslt"] and not info["cudnn"]
    if not info["cudnn"]:
        assert info["cudnn_status"].startswith("built without cuDNN"), info["cudnn_status"]
