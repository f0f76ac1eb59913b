"""nfd_rt.Session: the ReferenceSession API, input validation (same messages), errors that leave it usable.

Behaviour that needs the real C++ session (deterministic noise, different seeds) is asserted here too; the
numerics against the PyTorch oracle are tested with the ops/model (parity tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import nfd_rt
from nfd_rt import configs
from nfd_rt.export import NFDFormatError

from nfd_testfiles import random_nfd

_core = pytest.importorskip("nfd_rt._core", reason="the compiled extension nfd_rt._core is not built")

CFG = configs.get("tiny")
A = CFG.action_dim


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.nfd"
    path.write_bytes(random_nfd(CFG, seed=3))
    return str(path)


@pytest.fixture
def session(model_path):
    with nfd_rt.Session(model_path, seed=7) as s:
        yield s


def action(i: int = 0) -> np.ndarray:
    a = np.zeros(A, np.float32)
    a[i % A] = 1.0
    return a


def test_shapes_config_and_frame_index(session):
    assert session.config == CFG
    assert session.frame_index == 0
    f = session.step(action())
    assert f.shape == (CFG.frame_height, CFG.frame_width, 3) and f.dtype == np.uint8
    z = session.step_latent(action(1))
    assert z.shape == (CFG.latent_channels, CFG.latent_height, CFG.latent_width) and z.dtype == np.float32
    assert session.frame_index == 2
    d = session.decode(z)
    assert d.shape == f.shape and d.dtype == np.uint8
    assert session.frame_index == 2  # decode does not advance
    assert session.memory_bytes() > 0


def test_reset_variants(session):
    frames = np.zeros((3, CFG.frame_height, CFG.frame_width, 3), np.uint8)
    session.reset(frames, actions=np.ones((3, A), np.float32))
    assert session.frame_index == 3
    session.reset(frames[0])  # one frame [H, W, 3]
    assert session.frame_index == 1
    session.reset(latents=np.zeros((2, CFG.latent_channels, CFG.latent_height, CFG.latent_width), np.float32))
    assert session.frame_index == 2
    session.reset(frames[:0])  # T = 0
    assert session.frame_index == 0
    session.step(action())
    session.reset()
    assert session.frame_index == 0


@pytest.mark.parametrize("bad,msg", [
    (np.zeros(A + 1), "action must have shape (8,)"),
    (np.zeros((1, A)), "action must have shape (8,)"),
    (np.array([np.nan] + [0.0] * (A - 1)), "action contains NaN or inf"),
    (np.array([0.0] * (A - 1) + [np.inf]), "action contains NaN or inf"),
    (np.array(["a"] * A), "action must be numeric"),
])
def test_bad_action_rejected_then_usable(session, bad, msg):
    session.step(action())
    for call in (session.step, session.step_latent):
        with pytest.raises(ValueError) as e:
            call(bad)
        assert msg in str(e.value)
    assert session.frame_index == 1  # nothing happened
    session.step(action())
    assert session.frame_index == 2


@pytest.mark.parametrize("kwargs,msg", [
    ({"frames": np.zeros((1, 32, 32, 3), np.uint8)}, "frames must be uint8 [T, 64, 64, 3]"),
    ({"frames": np.zeros((1, 64, 64, 4), np.uint8)}, "frames must be uint8 [T, 64, 64, 3]"),
    ({"frames": np.zeros((1, 64, 64, 3), np.float32)}, "frames must have dtype uint8"),
    ({"latents": np.zeros((1, 3, 8, 8), np.float32)}, "latents must be float32 [T, 4, 8, 8]"),
    ({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, "latents contains NaN or inf"),
    ({"frames": np.zeros((2, 64, 64, 3), np.uint8), "actions": np.zeros((3, 8))}, "actions must have shape (2, 8)"),
    ({"frames": np.zeros((1, 64, 64, 3), np.uint8), "latents": np.zeros((1, 4, 8, 8))}, "either frames or latents"),
    ({"actions": np.zeros((1, 8))}, "actions must have shape (0, 8)"),
])
def test_bad_reset_rejected_then_usable(session, kwargs, msg):
    session.step(action())
    with pytest.raises(ValueError) as e:
        session.reset(**kwargs)
    assert msg in str(e.value)
    assert session.frame_index == 1  # a rejected reset changes nothing
    session.step(action())
    assert session.frame_index == 2


def test_bad_decode(session):
    with pytest.raises(ValueError, match="latents must be float32"):
        session.decode(np.zeros((4, 8, 9), np.float32))
    with pytest.raises(ValueError, match="decode takes one latent"):
        session.decode(np.zeros((2, 4, 8, 8), np.float32))


def test_same_messages_as_reference(model_path):
    torch = pytest.importorskip("torch", reason="compares with the PyTorch ReferenceSession")
    from nfd_rt.reference import ReferenceSession

    ref, s = ReferenceSession(model_path), nfd_rt.Session(model_path)
    for bad in (np.zeros(3), np.full(A, np.nan), torch.zeros(A + 2)):
        msgs = []
        for x in (ref, s):
            with pytest.raises(ValueError) as e:
                x.step(bad)
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]
    s.close()


def test_torch_inputs(session):
    torch = pytest.importorskip("torch", reason="torch tensors as inputs")
    session.reset(torch.zeros(1, CFG.frame_height, CFG.frame_width, 3, dtype=torch.uint8))
    session.step(torch.ones(A))
    assert session.frame_index == 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_torch_low_precision_actions_are_converted(model_path, dtype):
    """A bf16 torch tensor (numpy has no bfloat16) is taken as its exact float32 values, not a torch TypeError."""
    torch = pytest.importorskip("torch", reason="torch tensors as inputs")
    a = action(3) * 0.5
    with nfd_rt.Session(model_path, seed=4) as s1, nfd_rt.Session(model_path, seed=4) as s2:
        np.testing.assert_array_equal(s1.step_latent(torch.from_numpy(a).to(getattr(torch, dtype))),
                                      s2.step_latent(a))
        with pytest.raises(ValueError, match="action must be numeric"):
            s1.step(torch.zeros(A, dtype=torch.complex64))
        s1.step(a)  # still usable


@pytest.mark.parametrize("seed, shown", [(1.5, "1.5 (float)"), ("abc", "'abc' (str)"), (True, "True (bool)"),
                                         (2**64, str(2**64)), (np.float32(3), "(float32)")])
def test_bad_seeds_are_refused_by_name(model_path, seed, shown):
    """A float seed is refused rather than silently truncated; every message names the seed and the value."""
    with pytest.raises(ValueError, match="seed must be an integer") as e:
        nfd_rt.Session(model_path, seed=seed)
    assert shown in str(e.value)
    with nfd_rt.Session(model_path, seed=np.uint64(2**64 - 1)) as s:  # numpy integers are integers
        assert s.seed == 2**64 - 1


def test_absurd_thread_counts_are_refused(model_path):
    from nfd_rt import _core

    for bad in (100000, _core.max_threads() + 1, 2.0, "4"):
        with pytest.raises(ValueError, match="threads must be"):
            nfd_rt.Session(model_path, threads=bad)
    with pytest.raises(ValueError, match="threads must be between 0"):  # the binding checks too
        _core.Session(model_path, "cpu", "float32", 0, 100000, True, 0)
    import os
    with pytest.warns(RuntimeWarning, match="more than the"):
        nfd_rt.Session(model_path, threads=(os.cpu_count() or 1) + 1).close()


def test_same_seed_same_video_and_step_equals_decode_of_step_latent(model_path):
    with nfd_rt.Session(model_path, seed=11) as s1, nfd_rt.Session(model_path, seed=11) as s2:
        for i in range(3):
            z = s1.step_latent(action(i))
            f = s2.step(action(i))
            np.testing.assert_array_equal(s1.decode(z), f)
        np.testing.assert_array_equal(s1.step_latent(action()), s2.step_latent(action()))


def test_different_seeds_differ(model_path):
    with nfd_rt.Session(model_path, seed=1) as s1, nfd_rt.Session(model_path, seed=2) as s2:
        assert not np.array_equal(s1.step_latent(action()), s2.step_latent(action()))


def test_close_and_context_manager(model_path):
    s = nfd_rt.Session(model_path)
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.step(action()), lambda: s.step_latent(action()), lambda: s.reset(),
                 lambda: s.decode(np.zeros((4, 8, 8), np.float32)), lambda: s.frame_index, s.memory_bytes):
        with pytest.raises(RuntimeError, match="session is closed"):
            call()
    with nfd_rt.Session(model_path) as s2:
        s2.step(action())
    with pytest.raises(RuntimeError, match="session is closed"):
        s2.step(action())


def test_bad_constructor_arguments(model_path, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        nfd_rt.Session(model_path, dtype="int8")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        nfd_rt.Session(model_path, device="tpu")
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        nfd_rt.Session(model_path, seed=-1)
    with pytest.raises(ValueError, match="threads must be between 0"):
        nfd_rt.Session(model_path, threads=-2)
    with pytest.raises(OSError, match="cannot open"):
        nfd_rt.Session(tmp_path / "missing.nfd")
    (tmp_path / "bad.nfd").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(NFDFormatError, match="not a .nfd file"):
        nfd_rt.Session(tmp_path / "bad.nfd")


def test_cuda_unavailable_is_a_clear_error(model_path):
    from nfd_rt import _core

    if _core.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        nfd_rt.Session(model_path, device="cuda")


def test_float16_on_the_cpu_is_a_value_error(model_path):
    """Bad input, as the README promises: ValueError (it was RuntimeError), and the message says what would work."""
    with pytest.raises(ValueError, match="the CPU backend computes in float32 or bfloat16; dtype float16 needs "
                                         "device cuda"):
        nfd_rt.Session(model_path, dtype="float16")
    with pytest.raises(ValueError, match="computes in float32 or bfloat16"):
        nfd_rt.Model(model_path, dtype="float16")


def test_bfloat16_on_the_cpu_runs_where_the_cpu_has_it(model_path):
    """bf16 on the CPU: the default ("auto") where the CPU has AVX512-BF16 or AMX, float32 by request; elsewhere
    bf16 is a ValueError naming what is missing, and "auto" is float32."""
    bf16 = _core.cpu_bf16()
    assert nfd_rt.resolve_dtype("cpu") == ("bfloat16" if bf16["ok"] else "float32")
    assert nfd_rt.resolve_dtype("cpu", None) == nfd_rt.resolve_dtype("cpu", "auto")
    assert nfd_rt.resolve_dtype("cuda") == "float32" and nfd_rt.resolve_dtype("cpu", "float32") == "float32"
    with nfd_rt.Session(model_path, seed=1) as s, nfd_rt.Session(model_path, dtype="float32", seed=1) as f:
        assert s.dtype == nfd_rt.resolve_dtype("cpu") and f.dtype == "float32"
        assert "dtype=" + repr(s.dtype) in repr(s)
        s.step(action(0))
    assert nfd_rt.Model(model_path).dtype == nfd_rt.resolve_dtype("cpu")
    if bf16["ok"]:
        with nfd_rt.Session(model_path, dtype="bfloat16", seed=1) as s:
            assert s.step(action(0)).dtype == np.uint8
    else:
        with pytest.raises(ValueError, match="dtype bfloat16 on the CPU needs AVX512-BF16 or AMX"):
            nfd_rt.Session(model_path, dtype="bfloat16")


def test_bfloat16_is_refused_on_a_cpu_without_it(model_path):
    """oneDNN capped below AVX512-BF16 (ONEDNN_MAX_CPU_ISA), as on a CPU without bf16: a bf16 session is a
    ValueError naming what is missing and what to use; the default is float32 there."""
    if not _core.cpu_bf16()["onednn"]:
        pytest.skip("built without oneDNN: no CPU has bf16 in this build")
    code = f"""
import nfd_rt
try:
    nfd_rt.Session({str(model_path)!r}, dtype="bfloat16")
    raise SystemExit("a bf16 session opened")
except ValueError as e:
    assert "dtype bfloat16 on the CPU needs AVX512-BF16 or AMX: this CPU has neither" in str(e), e
    assert "use dtype float32" in str(e), e
s = nfd_rt.Session({str(model_path)!r})
assert s.dtype == "float32", s.dtype
print("refused")
"""
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
                       capture_output=True, text=True)
    assert r.returncode == 0 and "refused" in r.stdout, r.stdout + r.stderr


def test_no_driver_is_not_an_insufficient_driver():
    """Without any NVIDIA driver the CUDA runtime says "driver version is insufficient"; say what is missing."""
    import ctypes

    from nfd_rt import _core

    if not _core.built_with_cuda():
        pytest.skip("nfd_rt was built without CUDA (the CUDA runtime is not asked)")
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("an NVIDIA driver (libcuda.so.1) is installed")
    except OSError:
        pass
    reason = _core.cuda_unavailable_reason()
    assert reason == "no CUDA device: no NVIDIA driver is installed (libcuda.so.1 not found)", reason
    from nfd_rt.demo import MODEL_PATH

    with pytest.raises(RuntimeError, match="no NVIDIA driver is installed"):
        nfd_rt.Session(MODEL_PATH, device="cuda")


def test_low_level_binding_checks_buffers(model_path):
    from nfd_rt import _core

    s = _core.Session(model_path)
    with pytest.raises(ValueError, match="action must have dtype float32"):
        s.step(np.zeros(A, np.float64))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        s.step(np.zeros(2 * A, np.float32)[::2])
    with pytest.raises(ValueError, match=r"frames must have shape \(T, 64, 64, 3\)"):
        s.reset_frames(np.zeros((1, 64, 63, 3), np.uint8))
    latent, frame = s.step(np.zeros(A, np.float32), False)
    assert frame is None and latent.shape == (CFG.latent_channels, CFG.latent_height, CFG.latent_width)
    assert nfd_rt.configs.NFDConfig.from_dict(s.config) == CFG
    s.close()


def test_threads_share_a_session_safely(session):
    errors = []

    def work():
        try:
            for i in range(3):
                session.step_latent(action(i))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and session.frame_index == 9


def test_cli_env_reports_the_runtime(capsys):
    import json

    from nfd_rt import cli
    from nfd_rt._native import core

    assert cli.main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["CPU kernels"] == core().cpu_kernel_level() and env["CPU kernels"]
    assert "OpenBLAS" in env["BLAS"]
    assert ("oneDNN" in env["CPU fp32 GEMM"]) == bool(core().cpu_bf16()["onednn"]), env["CPU fp32 GEMM"]
    assert int(env["default threads"].split()[0]) == core().default_threads() >= 1
    assert env["CUDA"].startswith("yes" if core().cuda_available() else "no")
    if core().built_with_cuda():  # each vendor engine: built in or not, and whether its library loads here
        info = core().cuda_build_info()
        for name, key in [("cuBLASLt", "cublaslt_status"), ("cuDNN", "cudnn_status")]:
            assert f"{name}: {info[key]}" in env["CUDA engines"], env["CUDA engines"]
    else:
        assert env["CUDA engines"] == "none (built without CUDA)"
    if not core().cuda_available():  # says which: not compiled in, or compiled in with no device
        want = "built with CUDA, but" if core().built_with_cuda() else "built without CUDA"
        assert want in env["CUDA"], env["CUDA"]


def test_import_points_the_cuda_loaders_at_pip_nvidia_libraries(tmp_path, monkeypatch):
    """nfd_rt._native sets NFD_RT_CUDNN_LIB / NFD_RT_CUBLASLT_LIB to the NVIDIA wheels of this Python's
    site-packages (where PyTorch installs them) when unset, and leaves a value the user set alone."""
    import sys

    from nfd_rt import _native

    for rel in ("nvidia/cudnn/lib/libcudnn.so.9", "nvidia/cu13/lib/libcublasLt.so.13"):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(b"")
    for mod in [m for m in sys.modules if m == "nvidia" or m.startswith("nvidia.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("NFD_RT_CUDNN_LIB", raising=False)
    monkeypatch.setenv("NFD_RT_CUBLASLT_LIB", "/mine/libcublasLt.so.13")
    _native._point_at_vendor_libs()
    import os

    assert os.environ["NFD_RT_CUDNN_LIB"] == str(tmp_path / "nvidia/cudnn/lib/libcudnn.so.9")
    assert os.environ["NFD_RT_CUBLASLT_LIB"] == "/mine/libcublasLt.so.13"
