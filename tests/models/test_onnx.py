"""ONNX export (`nfd-rt export-onnx`, `nfd_rt.export.to_onnx`) checked with ONNX Runtime against the reference.

`nfd_rt.onnx_runtime.OnnxSession` drives the exported graphs with the host loop of nfd_onnx.json; it must give the
video of `ReferenceSession` (same seed, same noise stream) within float32 tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting needs torch (the `torch` extra)")
onnx = pytest.importorskip("onnx", reason="needs onnx (the `onnx` or `test` extra)")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (the `onnx` or `test` extra)")

import nfd_rt  # noqa: E402
from nfd_rt.export import save  # noqa: E402
from nfd_rt import rng  # noqa: E402
from nfd_rt.onnx_runtime import (OnnxSession, frame_noise, rope_time, slot_of_frame, timestep_features,  # noqa: E402
                         valid_frames)
from nfd_rt.reference import KVCache, NFDModel, ReferenceSession  # noqa: E402

LATENT_TOL = 1e-4
TORCH_THREADS = torch.get_num_threads()
CPU = ["CPUExecutionProvider"]


def actions(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def level_diff(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model(tiny_model):  # conftest.py's tiny model (window 8, 1 sink frame, init_seed 0)
    return tiny_model


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    """The tiny model exported the way a user does it: `nfd-rt export-onnx MODEL.nfd -o DIR`."""
    d = tmp_path_factory.mktemp("onnx")
    save(model, d / "tiny.nfd")
    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "export-onnx", str(d / "tiny.nfd"), "-o", str(d / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "dit_pass.onnx" in r.stdout
    return d / "out"


def session(export_dir, seed=0):
    return OnnxSession(export_dir, seed=seed, providers=CPU, threads=1)


def test_export_files_spec_and_graphs(export_dir, model):
    cfg = model.cfg
    spec = json.loads((export_dir / "nfd_onnx.json").read_text())
    assert spec["format"] == "nfd_rt-onnx" and spec["opset"] == 17
    assert spec["config"] == json.loads(cfg.to_json())
    assert spec["sampler"]["schedule"] == list(cfg.schedule) and spec["sampler"]["passes_per_frame"] == 5
    assert spec["cache"]["slots"] == 9 and spec["cache"]["window"] == 8 and spec["cache"]["sink_frames"] == 1
    L, H, S, N, hd = cfg.depth, cfg.num_heads, cfg.cache_frames, cfg.tokens_per_frame, cfg.head_dim
    for graph, file in spec["files"].items():
        m = onnx.load(str(export_dir / file))
        onnx.checker.check_model(m, full_check=True)
        assert m.opset_import[0].version == 17
        # No float64 anywhere (TensorRT has none): angles come in from the host.
        assert not any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for n in m.graph.node for a in n.attribute)
        shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in list(m.graph.input) + list(m.graph.output)}
        want = {io["name"]: io["shape"] for io in spec["graphs"][graph]["inputs"] + spec["graphs"][graph]["outputs"]}
        assert shapes == want, graph
    dit = spec["graphs"]["dit_pass"]
    assert {i["name"]: i["shape"] for i in dit["inputs"]}["k_cache"] == ["batch", L, H, S, N, hd]
    assert {o["name"]: o["shape"] for o in dit["outputs"]}["k_new"] == ["batch", L, H, N, hd]
    assert set(spec["files"]) == {"dit_pass", "vae_decoder", "vae_encoder"}


def test_batch_axis_and_valid_frames(export_dir, model):
    """One call with batch 2 equals two batch-1 calls (the graphs were traced at batch 1); slots at or past
    valid_frames are never read."""
    cfg = model.cfg
    sess = ort.InferenceSession(str(export_dir / "dit_pass.onnx"), providers=CPU)
    rng = np.random.default_rng(0)
    S = cfg.cache_frames
    cache = (2, cfg.depth, cfg.num_heads, S, cfg.tokens_per_frame, cfg.head_dim)
    cos, sin = zip(*(rope_time(f, cfg.rope_dims[0], cfg.rope_theta) for f in (3, 40)))
    feeds = {
        "latent": rng.standard_normal((2, cfg.latent_channels, cfg.latent_height, cfg.latent_width), np.float32),
        "t_features": np.stack([timestep_features(t, cfg.time_embed_dim) for t in (1.0, 0.02)]),
        "action": actions(2, cfg.action_dim),
        "rope_cos": np.stack(cos), "rope_sin": np.stack(sin),
        "k_cache": rng.standard_normal(cache, np.float32), "v_cache": rng.standard_normal(cache, np.float32),
        "valid_frames": np.array([3, S], np.int64),
    }
    both = sess.run(None, feeds)
    for b in range(2):
        one = sess.run(None, {k: v[b:b + 1] for k, v in feeds.items()})
        for x, y in zip(one, both):
            np.testing.assert_allclose(x[0], y[b], rtol=0, atol=1e-5)
    garbage = {k: v.copy() for k, v in feeds.items()}
    garbage["k_cache"][0, :, :, 3:] = 1e6  # past element 0's valid_frames
    garbage["v_cache"][0, :, :, 3:] = -1e6  # (finite: a masked score is 0, and 0 * NaN is NaN)
    again = sess.run(None, garbage)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(again, both))
    garbage["k_cache"][1, :, :, 0] += 1.0  # a valid slot of element 1 does matter
    again = sess.run(None, garbage)
    assert np.abs(again[0][1] - both[0][1]).max() > 1e-3
    dec = ort.InferenceSession(str(export_dir / "vae_decoder.onnx"), providers=CPU)
    frames = dec.run(None, {"latent": feeds["latent"]})[0]
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
    for b in range(2):
        np.testing.assert_array_equal(dec.run(None, {"latent": feeds["latent"][b:b + 1]})[0][0], frames[b])


def test_frame_noise_is_the_rng_stream_bit_for_bit():
    for shape in [(4, 8, 8), (3, 5, 7), (16, 28, 48)]:
        for frame in (0, 17, 2**32 - 1):
            got = frame_noise(12345678901, frame, [0, 4, 3], shape)
            for slot, g in zip([0, 4, 3], got):
                np.testing.assert_array_equal(g, rng.latent_noise(12345678901, frame, slot, shape))


@pytest.mark.parametrize("window,sink", [(8, 1), (2, 0), (0, 2), (3, 2)])
def test_slot_rules_match_reference_cache(window, sink):
    """The host loop's rule (filled slots = the prefix 0..valid_frames-1, all visible) is the reference cache's."""
    cfg = nfd_rt.configs.get("tiny").replace(window=window, sink_frames=sink)
    cache = KVCache(cfg, torch.device("cpu"), torch.float32)
    for i in range(40):
        assert sorted(cache.visible_slots(i)) == list(range(valid_frames(cfg, i))), i  # (in frame order)
        assert slot_of_frame(cfg, i) == cache.slot_for(i)
        slot = cache.slot_for(i)
        if slot is not None:
            cache.slot_frame[slot] = i


def test_float_decoder_output_and_other_opset(tmp_path, model):
    """--vae-output float32 (for engines without uint8 outputs) at opset 20: same frames."""
    spec = nfd_rt.export.to_onnx(model, tmp_path, opset=20, vae_output="float32", encoder=False)
    assert spec["opset"] == 20 and "vae_encoder" not in spec["files"] and not (tmp_path / "vae_encoder.onnx").exists()
    assert spec["graphs"]["vae_decoder"]["outputs"][0]["name"] == "image"
    s, r = session(tmp_path, seed=2), ReferenceSession(model, seed=2)
    for a in actions(3, model.cfg.action_dim, seed=1):
        assert level_diff(s.step(a), r.step(a)) <= 1
    with pytest.raises(ValueError, match="no vae_encoder.onnx"):
        s.reset(frames=np.zeros((1, 64, 64, 3), np.uint8))


def test_fixed_batch_export(tmp_path, model):
    """--batch 1: every shape static (no dynamic axis left), same video."""
    save(model, tmp_path / "m.nfd")
    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "export-onnx", str(tmp_path / "m.nfd"), "-o",
                        str(tmp_path / "out"), "--batch", "1", "--no-encoder"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fixed batch 1" in r.stdout
    out = tmp_path / "out"
    spec = json.loads((out / "nfd_onnx.json").read_text())
    assert spec["dynamic_axes"] == {} and set(spec["files"]) == {"dit_pass", "vae_decoder"}
    for file in spec["files"].values():
        m = onnx.load(str(out / file))
        dims = [d for v in list(m.graph.input) + list(m.graph.output) for d in v.type.tensor_type.shape.dim]
        assert all(d.HasField("dim_value") for d in dims), file
    s, ref = session(out, seed=4), ReferenceSession(model, seed=4)
    for a in actions(4, model.cfg.action_dim, seed=6):
        assert np.abs(s.step_latent(a) - ref.step_latent(a)).max() <= LATENT_TOL
    spec["graphs"]["dit_pass"]["inputs"][0]["shape"][0] = 2
    (out / "nfd_onnx.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="fixed batch of 2"):
        OnnxSession(out)
    with pytest.raises(ValueError, match="batch must be None"):
        nfd_rt.export.to_onnx(model, tmp_path, batch=0)


def test_exporter_refuses_what_it_cannot_express(tmp_path, model):
    no_cache = NFDModel(nfd_rt.configs.get("tiny").replace(window=0, sink_frames=0), init_seed=0)
    with pytest.raises(ValueError, match="sink_frames \\+ window is 0"):
        nfd_rt.export.to_onnx(no_cache, tmp_path)
    with pytest.raises(ValueError, match="opset 12 is not supported"):
        nfd_rt.export.to_onnx(model, tmp_path, opset=12)
    with pytest.raises(ValueError, match="vae_output"):
        nfd_rt.export.to_onnx(model, tmp_path, vae_output="float16")
    with pytest.raises(TypeError, match="NFDModel or a path"):
        nfd_rt.export.to_onnx(42, tmp_path)
    save(no_cache, tmp_path / "nc.nfd")
    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "export-onnx", str(tmp_path / "nc.nfd"), "-o",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot export 'tiny' to ONNX: sink_frames + window is 0" in r.stderr


def test_session_input_errors(export_dir, tmp_path):
    s = session(export_dir)
    with pytest.raises(ValueError, match="action must have shape \\(8,\\)"):
        s.step(np.zeros(3, np.float32))
    bad = np.zeros(8, np.float32)
    bad[1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        s.step_latent(bad)
    with pytest.raises(ValueError, match="frames must be uint8"):
        s.reset(frames=np.zeros((1, 32, 32, 3), np.uint8))
    assert s.frame_index == 0
    s.step(np.zeros(8, np.float32))  # still usable
    assert s.frame_index == 1
    with pytest.raises(ValueError, match="cannot read the ONNX export spec"):
        OnnxSession(tmp_path)
    (tmp_path / "nfd_onnx.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an nfd_rt ONNX export spec"):
        OnnxSession(tmp_path)
    with pytest.raises(ValueError, match="not available"):
        OnnxSession(export_dir, providers=["NoSuchExecutionProvider"])
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.step(np.zeros(8, np.float32))


def test_running_needs_no_torch(export_dir):
    """Only exporting needs torch: OnnxSession runs with torch made unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np; from nfd_rt.onnx_runtime import OnnxSession\n"
            f"s = OnnxSession({str(export_dir)!r}, providers=['CPUExecutionProvider'], threads=1)\n"
            "s.reset(frames=np.zeros((1, 64, 64, 3), np.uint8)); f = s.step(np.zeros(8, np.float32))\n"
            "print(f.shape, f.dtype, s.frame_index)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(64, 64, 3) uint8 2"


@pytest.mark.slow
def test_nfd_130m_first_frames_match_reference(tmp_path):
    """A random nfd-130m (336 tokens/frame, 12 layers, 32-slot cache): two frames against the reference."""
    torch.set_num_threads(TORCH_THREADS)  # big GEMMs: every core (the module's other tests use one thread)
    cfg = nfd_rt.configs.get("nfd-130m")
    m = NFDModel(cfg, init_seed=0)
    nfd_rt.export.to_onnx(m, tmp_path, encoder=False)
    s = OnnxSession(tmp_path, seed=1, providers=CPU)
    r = ReferenceSession(m, seed=1)
    for a in actions(2, cfg.action_dim, seed=3):  # the second frame attends to the first one's cache slot
        z, zr = s.step_latent(a), r.step_latent(a)
        err = float(np.abs(z - zr).max())
        print(f"nfd-130m frame {s.frame_index - 1}: max latent error {err:.3g}")
        assert err <= LATENT_TOL
    assert level_diff(s.decode(z), r.decode(zr)) <= 1  # one decode each: a 224x384 decoder is not cheap here


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
def test_cuda_execution_provider_matches_reference(export_dir, model):
    """The CUDA EP (cache in CUDA memory when torch has CUDA), TF32 off: 64 frames against the reference."""
    s = OnnxSession(export_dir, seed=3, providers=[("CUDAExecutionProvider", {"use_tf32": 0}),
                                                   "CPUExecutionProvider"])
    assert s.device == "cuda"
    r = ReferenceSession(model, seed=3)
    worst, worst_level = 0.0, 0
    for a in actions(64, model.cfg.action_dim):
        z, zr = s.step_latent(a), r.step_latent(a)
        worst = max(worst, float(np.abs(z - zr).max()))
        worst_level = max(worst_level, level_diff(s.decode(z), r.decode(zr)))
    print(f"ONNX Runtime CUDA EP (cache on {s.cache_device}) vs reference: max latent error {worst:.3g}")
    assert worst <= 1e-3 and worst_level <= 1


def test_docs_quickstart_runs_as_written(tmp_path):
    """docs/onnx.md's marked bash block: export-random, export-onnx, an OnnxSession stepping two frames."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "onnx.md").read_text()
    block = re.search(r"<!-- test: onnx-quickstart -->\s*```bash\n(.*?)```", text, re.S).group(1)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "(64, 64, 3) (4, 8, 8) 2"
