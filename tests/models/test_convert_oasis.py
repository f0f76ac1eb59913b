"""nfd_rt.convert.oasis and `nfd-rt convert oasis`: upstream-layout checkpoints -> .nfd.

No real Oasis weights can be downloaded here: the fixtures are random weights in the exact upstream layout
(names and shapes of oasis500m.safetensors / vit-l-20.safetensors as open-oasis' dit.py / vae.py build them).
The converted model is checked against `oasis_upstream_semantics`, a second statement of upstream's math that
runs on the upstream tensors themselves, so a mis-mapped tensor shows up as a wrong output.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import nfd_rt
from nfd_rt import configs

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")
pytest.importorskip("safetensors", reason="needs safetensors (the `torch` extra)")

import oasis_upstream_semantics as upstream  # noqa: E402
from nfd_rt.convert import oasis as conv  # noqa: E402
from nfd_rt.reference import OasisModel, OasisReferenceSession  # noqa: E402
from nfd_testfiles import subprocess_env  # noqa: E402

TINY = configs.get("oasis-tiny")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("oasis")
    dit, vae = d / "oasis500m.safetensors", d / "vit-l-20.safetensors"
    conv.write_upstream_fixture(TINY, dit, vae, seed=1)
    return dit, vae


@pytest.fixture(scope="module")
def converted(fixture_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "oasis-tiny.nfd"
    summary = conv.convert(*fixture_files, out, config="oasis-tiny")
    return out, summary


@pytest.fixture(scope="module")
def upstream_sd():
    return conv.random_upstream_state_dicts(TINY, seed=1)


# -- the upstream layout and the mapping ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["oasis-500m", "oasis-tiny"])
def test_key_coverage_both_ways(name):
    """Every .nfd tensor comes from exactly one upstream tensor; every upstream tensor is used (or is a RoPE
    table / the log-variance half, dropped on purpose); the mapped shapes are the reference model's."""
    cfg = configs.get(name)
    rules = conv.mapping(cfg)
    dit, vae = conv.upstream_dit_shapes(cfg), conv.upstream_vae_shapes(cfg)
    used = {(r.source, r.key) for r in rules}
    assert len(used) == len(rules) == len({r.nfd for r in rules})
    assert used == {("dit", k) for k in dit} | {("vae", k) for k in vae}
    with torch.device("meta"):
        model = OasisModel(cfg, init_seed=None)
    assert conv.nfd_shapes(cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_real_size_layout():
    """oasis500m.safetensors: 300 learned tensors (+ 2 RoPE tables a safetensors save keeps = 302, the count
    third-party loaders report), vit-l-20.safetensors: 228; sizes of the DiT-S/2 and ViT-L/20 modules."""
    cfg = configs.get("oasis-500m")
    dit, vae = conv.upstream_dit_shapes(cfg), conv.upstream_vae_shapes(cfg)
    assert (len(dit), len(vae)) == (300, 228)
    assert dit["x_embedder.proj.weight"] == (1024, 16, 2, 2) and dit["external_cond.weight"] == (1024, 25)
    assert dit["final_layer.linear.weight"] == (64, 1024) and dit["blocks.15.t_attn.to_qkv.weight"] == (3072, 1024)
    assert vae["patch_embed.proj.weight"] == (1024, 3, 20, 20) and vae["quant_conv.weight"] == (32, 1024)
    assert vae["predictor.weight"] == (1200, 1024) and "decoder.11.mlp.fc2.bias" in vae and "encoder.6.norm1.weight" not in vae
    assert sum(math.prod(s) for s in dit.values()) == 607_943_744
    assert sum(math.prod(s) for s in vae.values()) == 229_246_160
    rope = conv.upstream_dit_rope(cfg)
    assert rope["blocks.0.s_attn.rotary_emb.freqs"] == (16,) and rope["blocks.0.t_attn.rotary_emb.freqs"] == (32,)


def test_rope_tables_are_what_upstream_computes():
    cfg = configs.get("oasis-500m")
    s = conv.upstream_rope_values(cfg, "blocks.0.s_attn.rotary_emb.freqs")
    t = conv.upstream_rope_values(cfg, "temporal_rotary_emb.freqs")
    assert s.shape == (16,) and float(s[0]) == pytest.approx(math.pi) and float(s[-1]) == pytest.approx(128 * math.pi)
    assert t.shape == (32,) and float(t[0]) == 1.0 and float(t[1]) == pytest.approx(10000 ** (-2 / 64))


# -- converted == upstream's math ------------------------------------------------------------------------------

def test_summary_and_header(converted):
    out, summary = converted
    assert summary["tensors"] == len(conv.nfd_shapes(TINY)) and summary["config"] == "oasis-tiny"
    assert set(summary["not_written"]) >= {"blocks.0.s_attn.rotary_emb.freqs", "blocks.0.t_attn.rotary_emb.freqs"}
    table, cfg = nfd_rt.export.read_header(out)
    assert cfg == TINY and all(e["dtype"] == "F32" for e in table.values())
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    assert meta["nfd_format_version"] == "1" and json.loads(meta["config"])["architecture"] == "oasis"
    assert nfd_rt.convert.oasis is conv  # reachable as an attribute after `import nfd_rt`


def test_tensors_are_the_upstream_tensors_transformed(converted, upstream_sd):
    dit, vae = upstream_sd
    model = nfd_rt.export.load(converted[0])
    sd = model.state_dict()
    torch.testing.assert_close(sd["dit.blocks.1.temporal.qkv.weight"], dit["blocks.1.t_attn.to_qkv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(sd["dit.patch_embed.weight"], dit["x_embedder.proj.weight"].flatten(1), rtol=0, atol=0)
    C, p = TINY.latent_channels, TINY.patch_size
    w = dit["final_layer.linear.weight"]  # rows (py, px, c) -> ours (c, py, px)
    for c in range(C):
        for py in range(p):
            for px in range(p):
                assert torch.equal(sd["dit.final.linear.weight"][c * p * p + py * p + px], w[(py * p + px) * C + c])
    assert torch.equal(sd["vae.encoder.to_latent.weight"], vae["quant_conv.weight"][:C])
    assert torch.equal(sd["vae.decoder.to_pixels.bias"], vae["predictor.bias"])


@torch.no_grad()
def test_dit_matches_upstream_semantics(converted, upstream_sd):
    model = nfd_rt.export.load(converted[0])
    g = torch.Generator().manual_seed(0)
    T = 5
    x = torch.randn(2, T, TINY.latent_channels, TINY.latent_height, TINY.latent_width, generator=g)
    t = torch.randint(0, 1000, (2, T), generator=g)
    a = torch.randn(2, T, TINY.action_dim, generator=g)
    want = upstream.dit_forward(upstream_sd[0], TINY, x, t, a)
    got = model.velocity(x, t, a)
    # Upstream computes RoPE angles and timestep features in float32, we in float64: ~1e-5 relative.
    torch.testing.assert_close(got, want, rtol=0, atol=5e-4 * float(want.abs().max()))


@torch.no_grad()
def test_vae_matches_upstream_semantics(converted, upstream_sd):
    model = nfd_rt.export.load(converted[0])
    vae = upstream_sd[1]
    frames = torch.randint(0, 256, (2, TINY.frame_height, TINY.frame_width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    images = frames.permute(0, 3, 1, 2).float() / 255 * 2 - 1  # upstream: (x / 255) * 2 - 1
    mean = upstream.vae_encode_mean(vae, TINY, images)  # [B, N, C]
    want_z = mean.transpose(1, 2).reshape(2, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    got_z = model.encode(frames)
    torch.testing.assert_close(got_z, want_z * 0.07843137255, rtol=0, atol=1e-5)
    want_img = upstream.vae_decode(vae, TINY, mean)
    got_img = model.vae.decoder(got_z / TINY.vae.scaling_factor)
    torch.testing.assert_close(got_img, want_img, rtol=0, atol=1e-4)
    want_u8 = (torch.clamp((want_img + 1) / 2, 0, 1) * 255).byte().permute(0, 2, 3, 1)
    assert (model.decode(got_z).int() - want_u8.int()).abs().max() <= 1


@torch.no_grad()
def test_generation_matches_upstreams_loop(converted, upstream_sd):
    """Upstream's whole sampling loop (sliding window, DDIM, context at level 14, clamped noise) on the upstream
    tensors == our recompute sampler at every frame, and == our cached sampler inside the window."""
    model = nfd_rt.export.load(converted[0])
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 256, (1, TINY.frame_height, TINY.frame_width, 3), dtype=np.uint8)
    n = TINY.max_frames + 3
    actions = rng.standard_normal((n, TINY.action_dim)).astype(np.float32)
    actions[0] = 0  # upstream prepends a zero action for the prompt frame
    shape = (TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    images = torch.from_numpy(prompt).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    z0 = upstream.vae_encode_mean(upstream_sd[1], TINY, images) * TINY.vae.scaling_factor
    z0 = z0.transpose(1, 2).reshape(1, *shape)
    want = upstream.generate(upstream_sd[0], TINY, z0, torch.from_numpy(actions),
                             lambda i: torch.from_numpy(nfd_rt.rng.latent_noise(5, i, 0, shape))).numpy()
    for sampler in ("recompute", "cached-rebuild", "cached"):
        s = OasisReferenceSession(model, seed=5, sampler=sampler)
        s.reset(prompt)
        got = np.stack([s.step_latent(a) for a in actions[1:]])
        upto = n - 1 if sampler != "cached" else TINY.max_frames - 1
        np.testing.assert_allclose(got[:upto], want[1:1 + upto], rtol=0, atol=5e-4, err_msg=sampler)


# -- errors name the first problem ------------------------------------------------------------------------------

def _write(tmp_path, dit, vae, dit_name="dit.safetensors", vae_name="vae.safetensors"):
    from safetensors.torch import save_file

    paths = tmp_path / dit_name, tmp_path / vae_name
    for sd, path in zip((dit, vae), paths):
        if str(path).endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        else:
            torch.save(sd, str(path))
    return paths


def _convert_error(tmp_path, dit, vae, **kw) -> str:
    paths = _write(tmp_path, dit, vae, **kw)
    out = tmp_path / "out.nfd"
    with pytest.raises(conv.ConversionError) as e:
        conv.convert(*paths, out, config="oasis-tiny")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".nfd-convert-")]
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_tensor(tmp_path, upstream_sd):
    dit, vae = (dict(d) for d in upstream_sd)
    del dit["blocks.1.s_mlp.fc2.bias"]
    assert "missing tensor 'blocks.1.s_mlp.fc2.bias' (expected shape [64]" in _convert_error(tmp_path, dit, vae)


def test_wrong_shape(tmp_path, upstream_sd):
    dit, vae = (dict(d) for d in upstream_sd)
    vae["decoder.0.attn.qkv.weight"] = torch.zeros(96, 64)
    msg = _convert_error(tmp_path, dit, vae)
    assert "VAE checkpoint" in msg and "'decoder.0.attn.qkv.weight' has shape [96, 64], expected [192, 64]" in msg


def test_unexpected_tensor(tmp_path, upstream_sd):
    dit, vae = (dict(d) for d in upstream_sd)
    dit["blocks.9.s_attn.to_qkv.weight"] = torch.zeros(3)
    dit["pos_embed"] = torch.zeros(3)
    assert "unexpected tensor 'blocks.9.s_attn.to_qkv.weight' (2 unexpected in all" in _convert_error(tmp_path, dit, vae)


def test_real_size_checkpoint_against_the_tiny_config(tmp_path, upstream_sd):
    """A wrong --config is a shape error naming the first tensor."""
    dit, vae = (dict(d) for d in upstream_sd)
    dit["x_embedder.proj.weight"] = torch.zeros(1024, 16, 2, 2)
    assert "'x_embedder.proj.weight' has shape [1024, 16, 2, 2], expected [64, 4, 2, 2]" in _convert_error(tmp_path, dit, vae)


def test_swapped_files(tmp_path, upstream_sd):
    dit, vae = upstream_sd
    assert "were the DiT and VAE checkpoints swapped? (pass this one as --vae)" in _convert_error(tmp_path, vae, dit)


def test_rope_tables_that_the_config_does_not_imply(tmp_path, upstream_sd):
    """Head count is invisible in the weight shapes; the RoPE tables upstream saves reveal it."""
    dit, vae = (dict(d) for d in upstream_sd)
    dit["blocks.0.t_attn.rotary_emb.freqs"] = dit["blocks.0.t_attn.rotary_emb.freqs"] * 1.5
    msg = _convert_error(tmp_path, dit, vae)
    assert "'blocks.0.t_attn.rotary_emb.freqs' holds RoPE frequencies that oasis-tiny does not imply" in msg


def test_integer_tensor_and_bad_files(tmp_path, upstream_sd):
    dit, vae = (dict(d) for d in upstream_sd)
    dit["external_cond.bias"] = torch.zeros(64, dtype=torch.int32)
    assert "'external_cond.bias' has dtype I32, expected a float type" in _convert_error(tmp_path, dit, vae)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(conv.ConversionError, match="not a readable safetensors file"):
        conv.convert(junk, junk, tmp_path / "o.nfd", config="oasis-tiny")
    (tmp_path / "a.npz").write_bytes(b"")
    with pytest.raises(conv.ConversionError, match="unknown extension '.npz'"):
        conv.convert(tmp_path / "a.npz", junk, tmp_path / "o.nfd", config="oasis-tiny")
    with pytest.raises(conv.ConversionError, match="no such file"):
        conv.convert(tmp_path / "nope.safetensors", junk, tmp_path / "o.nfd", config="oasis-tiny")
    with pytest.raises(conv.ConversionError, match="not an Oasis config"):
        conv.convert(junk, junk, tmp_path / "o.nfd", config="tiny")
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(conv.ConversionError, match="expected a flat state dict"):
        conv.convert(nested, junk, tmp_path / "o.nfd", config="oasis-tiny")


def test_pt_files_bfloat16_and_every_rope_name(tmp_path):
    """.pt state dicts (torch.save of upstream's state_dict: every shared RoPE name) in bfloat16 convert too."""
    dit, vae = tmp_path / "oasis500m.pt", tmp_path / "vit-l-20.pt"
    conv.write_upstream_fixture(TINY, dit, vae, seed=1, rope="all", dtype="bfloat16")
    out = tmp_path / "o.nfd"
    summary = conv.convert(dit, vae, out, config="oasis-tiny")
    assert len([k for k in summary["not_written"] if k.endswith("rotary_emb.freqs")]) == 2 * TINY.depth + 2
    model = nfd_rt.export.load(out)
    ref = conv.random_upstream_state_dicts(TINY, seed=1)[0]["blocks.0.s_adaLN_modulation.1.weight"]
    assert torch.equal(model.state_dict()["dit.blocks.0.spatial.adaln.weight"], ref.bfloat16().float())


# -- the command line ------------------------------------------------------------------------------------------

def _cli(*args):
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "nfd_rt.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_convert(tmp_path, fixture_files, converted):
    out = tmp_path / "cli.nfd"
    r = _cli("convert", "oasis", "--dit", str(fixture_files[0]), "--vae", str(fixture_files[1]), "-o", str(out),
             "--config", "oasis-tiny")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "config oasis-tiny" in r.stdout
    assert out.read_bytes() == converted[0].read_bytes()  # the same bytes as the API call
    r = _cli("convert", "oasis", "--dit", str(fixture_files[1]), "--vae", str(fixture_files[0]), "-o", str(out),
             "--config", "oasis-tiny")
    assert r.returncode == 1 and r.stderr.startswith("nfd-rt convert: error: DiT checkpoint")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli("convert", "oasis", "--dit", "x.safetensors")
    assert r.returncode == 2 and "required" in r.stderr
    r = _cli("convert", "genie-2")
    assert r.returncode == 2 and "invalid choice: 'genie-2'" in r.stderr
    r = _cli("convert", "oasis", "--help")
    assert r.returncode == 0 and "--dit" in r.stdout and "(default: oasis-500m)" in r.stdout


def test_docs_snippet_runs_as_written(tmp_path):
    """docs/oasis.md's try-it-without-the-weights commands, in an empty folder."""
    import re

    text = open(os.path.join(REPO, "docs", "oasis.md")).read()
    m = re.search(r"<!-- test: oasis-convert -->\s*```bash\n(.*?)```", text, re.S)
    assert m, "docs/oasis.md has no bash block marked <!-- test: oasis-convert -->"
    env = subprocess_env()
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", m.group(1)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert nfd_rt.export.read_header(tmp_path / "oasis-tiny.nfd")[1] == TINY


# -- the real size ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NFD_RT_SLOW_TESTS") != "1",
                    reason="writes and converts 3.35 GB of random real-size weights; set NFD_RT_SLOW_TESTS=1")
def test_real_size_conversion(tmp_path):
    cfg = configs.get("oasis-500m")
    dit, vae = tmp_path / "oasis500m.safetensors", tmp_path / "vit-l-20.safetensors"
    conv.write_upstream_fixture(cfg, dit, vae, seed=0)
    out = tmp_path / "oasis500m.nfd"
    summary = conv.convert(dit, vae, out)
    assert summary["parameters"] == 607_943_744 + 229_246_160 - 16 * 1024 - 16
    table, got = nfd_rt.export.read_header(out)
    assert got == cfg and {k: tuple(v["shape"]) for k, v in table.items()} == conv.nfd_shapes(cfg)
