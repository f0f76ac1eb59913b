"""nfd_rt.convert.waypoint: upstream-layout folders (random weights; real ones cannot be downloaded here) -> .nfd,
every name and shape checked, named errors, and the converted model computing what the upstream formulas compute
on the upstream tensors."""

import json
import math
import os
import shutil

import numpy as np
import pytest

import nfd_rt
from nfd_rt.convert import waypoint as cw

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")
yaml = pytest.importorskip("yaml", reason="needs PyYAML (the `convert` extra)")

import torch.nn.functional as F  # noqa: E402

from nfd_rt.reference import waypoint as wp  # noqa: E402

TINY = nfd_rt.configs.get("waypoint-tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("waypoint") / "Waypoint-1.5-tiny"
    cw.write_fixture(d, TINY, seed=3)
    return d


@pytest.fixture(scope="module")
def converted(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nfd") / "w.nfd"
    cfg = cw.convert(fixture_dir, out)
    return out, cfg


def test_fixture_converts_and_runs_deterministically(converted):
    out, cfg = converted
    assert cfg == TINY  # the tiny geometry keeps its name
    table, read = nfd_rt.export.read_header(out)
    assert read == TINY and all(e["dtype"] == "F32" for e in table.values())
    ctrl = [wp.controls(TINY, buttons={1, 3}, mouse=(0.5, -0.2)), wp.controls(TINY, scroll=-2)]
    a, b = wp.WaypointSession(out, seed=4), wp.WaypointSession(out, seed=4)
    fa, fb = [a.step(c) for c in ctrl], [b.step(c) for c in ctrl]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert fa[0].shape == (4, 72, 128, 3) and fa[0].dtype == np.uint8
    assert np.isfinite(a.step_latent(ctrl[0])).all()


def test_key_coverage_both_ways(fixture_dir):
    model, taehv = cw.random_upstream(TINY, seed=1)
    read, read_tae = [], []

    def get(name):
        read.append(name)
        return model[name]

    def get_tae(name):
        read_tae.append(name)
        return taehv[name]

    cw.check_tied_heads(TINY, get, "m")
    ours = cw.reference_tensors(TINY, get, get_tae)
    ref = wp.WaypointModel(TINY, init_seed=None).state_dict()
    assert list(sorted(ours)) == list(sorted(ref))  # every tensor of our model, nothing else
    for name, lazy in ours.items():
        a = np.asarray(lazy)
        assert a.shape == tuple(ref[name].shape) == lazy.shape, name
    # Every upstream tensor is read, except the null control embedding (classifier-free guidance, unused).
    assert set(read) == set(cw.upstream_shapes(TINY)) - {"ctrl_cfg.null_emb"}
    assert set(read_tae) == set(cw.upstream_taehv_shapes(TINY))


@pytest.mark.parametrize("name", ["waypoint-1.5-1b", "waypoint-1.5-1b-360p"])
def test_real_size_tables(name):
    """The published checkpoint's table (FlashDreams' waypoint key/shape contract: 393 BF16 tensors,
    1,860,823,096 values; the 360P weights have the same shapes) and our model's shapes, nothing materialised."""
    cfg = nfd_rt.configs.get(name)
    table = cw.upstream_shapes(cfg)
    assert len(table) == 393 and sum(math.prod(s) for s in table.values()) == 1_860_823_096
    assert table["transformer.blocks.3.ctrl_mlpfusion.fc1_x.weight"] == (2048, 2048)
    assert "transformer.blocks.4.ctrl_mlpfusion.fc2.weight" not in table
    assert table["ctrl_emb.mlp.fc1.weight"] == (8192, 259) and table["transformer.blocks.0.attn.v_lamb"] == ()
    cw.check_table(dict(table), table, "model.safetensors")
    tae = cw.upstream_taehv_shapes(cfg)
    assert len(tae) == 128 and tae["decoder.22.weight"] == (12, 64, 3, 3) and tae["encoder.17.weight"] == (32, 64, 3, 3)
    assert cw.taehv_from_shapes(dict(tae), "t") == cfg.taehv
    with torch.device("meta"):
        ref = wp.WaypointModel(cfg, init_seed=None).state_dict()
    ours = cw.reference_tensors(cfg, lambda n: None, lambda n: None)
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    raw = cw.upstream_config(cfg)
    assert cw.config_from_upstream(raw, cfg.taehv) == cfg  # the published geometry keeps its nfd_rt name
    assert cw.config_from_upstream(raw, cfg.taehv, name="mine").name == "mine"


def test_diffusers_layout_and_pth_taehv(tmp_path, converted):
    d = tmp_path / "diffusers"
    cw.write_fixture(d, TINY, seed=3, layout="diffusers", taehv_format="pth")
    out = tmp_path / "d.nfd"
    cw.convert(d, out)
    # Same seed, same tensors (F16 TAEHV either way): the same .nfd bytes as the world_engine layout.
    assert out.read_bytes() == converted[0].read_bytes()


def test_cli_convert(fixture_dir, tmp_path, capsys):
    from nfd_rt.cli import main

    out = tmp_path / "cli.nfd"
    assert main(["convert", "waypoint", str(fixture_dir), "-o", str(out)]) == 0
    assert "waypoint-tiny" in capsys.readouterr().out and out.exists()
    assert main(["convert", "waypoint", str(tmp_path / "nowhere"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nfd-rt convert: error:") and "not a folder" in err and len(err.splitlines()) == 1


def copy_fixture(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_yaml(folder, **changes):
    p = folder / "config.yaml"
    d = yaml.safe_load(p.read_text())
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    p.write_text(yaml.safe_dump(d))


def rewrite_model(folder, edit):
    st = cw.SafetensorsFile(folder / "model.safetensors")
    tensors = {k: st.array(k) for k in st.entries}
    edit(tensors)
    cw.write_safetensors(folder / "model.safetensors", tensors, dtype="BF16")


@pytest.mark.parametrize("case,match", [
    ("no_config", "no config.yaml"),
    ("no_model", "model.safetensors: missing"),
    ("no_taehv", "no TAEHV weights .*taehv/taehv1_5.pth"),
    ("unknown_option", "unknown config option 'sparkle'.*--ignore-option sparkle"),
    ("waypoint1", "model_type='waypoint-1' is not supported"),
    ("missing_option", "config option 'n_buttons' is missing"),
    ("bad_patch", r"patch=\[2, 1\] is not supported"),
    ("moe", "moe=True is not supported"),
    ("odd_size", "160x64 autoencoder frames are not 16:8"),
    ("bad_yaml", "not valid YAML"),
    ("missing_tensor", "missing tensor 'transformer.blocks.2.attn.v_lamb'"),
    ("extra_tensor", "unexpected tensor 'transformer.blocks.1.ctrl_mlpfusion.fc2.weight'"),
    ("bad_shape", r"tensor 'out_norm.fc.weight' has shape \[64, 64\], expected \[128, 64\]"),
    ("untied", "tensor 'transformer.blocks.2.mlp_cond_head.cond_proj.1.weight' differs from layer 0's"),
    ("truncated", "data offsets"),
    ("taehv_missing", "missing tensor 'decoder.9.conv.2.bias'"),
    ("taehv_channels", "encoder time factor 2\\*\\*1 differs from the decoder's 2\\*\\*2"),
])
def test_bad_folders_give_named_errors(fixture_dir, tmp_path, case, match):
    d = copy_fixture(fixture_dir, tmp_path / case)
    if case == "no_config":
        os.remove(d / "config.yaml")
    elif case == "no_model":
        os.remove(d / "model.safetensors")
    elif case == "no_taehv":
        shutil.rmtree(d / "taehv")
    elif case == "unknown_option":
        edit_yaml(d, sparkle=True)
    elif case == "waypoint1":
        edit_yaml(d, model_type="waypoint-1")
    elif case == "missing_option":
        edit_yaml(d, n_buttons=...)
    elif case == "bad_patch":
        edit_yaml(d, patch=[2, 1])
    elif case == "moe":
        edit_yaml(d, moe=True)
    elif case == "odd_size":
        edit_yaml(d, width=5, tokens_per_frame=10)
    elif case == "bad_yaml":
        (d / "config.yaml").write_text("n_layers: [4\n")
    elif case == "missing_tensor":
        rewrite_model(d, lambda t: t.pop("transformer.blocks.2.attn.v_lamb"))
    elif case == "extra_tensor":
        rewrite_model(d, lambda t: t.update({"transformer.blocks.1.ctrl_mlpfusion.fc2.weight": np.zeros((64, 64))}))
    elif case == "bad_shape":
        rewrite_model(d, lambda t: t.update({"out_norm.fc.weight": np.zeros((64, 64))}))
    elif case == "untied":
        rewrite_model(d, lambda t: t["transformer.blocks.2.mlp_cond_head.cond_proj.1.weight"].__setitem__(
            (0, 0), 7.0))
    elif case == "truncated":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[:-100])
    elif case in ("taehv_missing", "taehv_channels"):
        st = cw.SafetensorsFile(d / "taehv" / "taehv1_5.safetensors")
        t = {k: st.array(k) for k in st.entries}
        if case == "taehv_missing":
            t.pop("decoder.9.conv.2.bias")
        else:  # the encoder pools time only once: 2 frames per latent, but the config says 4
            t["encoder.7.conv.weight"] = t["encoder.7.conv.weight"][:, :8]
        cw.write_safetensors(d / "taehv" / "taehv1_5.safetensors", t, dtype="F16")
    with pytest.raises(cw.ConversionError, match=match):
        cw.convert(d, tmp_path / "out.nfd")
    assert not (tmp_path / "out.nfd").exists() and not (tmp_path / "out.nfd.part").exists()


def test_ignore_option(fixture_dir, tmp_path):
    d = copy_fixture(fixture_dir, tmp_path / "extra")
    edit_yaml(d, sparkle=True, ctrl_cond_dropout=0.1)
    cfg = cw.convert(d, tmp_path / "o.nfd", ignore_options=["sparkle"])
    assert cfg == TINY


# ---------------------------------------------------------------------------------------------------------------
# The converted model computes what world_engine's formulas compute on the upstream tensors. Those formulas are
# restated here, keyed by the checkpoint's names (src/model/{world_model,attn,nn}.py of Overworldai/world_engine,
# taehv.py of madebyollin/taehv): a second statement of the math, independent of the name mapping.


def upstream_velocity(U, cfg, x, sigma, mouse, button, scroll, frame):
    """One pass of a frame with an empty cache (it attends to itself only). x [C, h, w]."""
    T = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in U.items()}
    rms = lambda t: F.rms_norm(t, (t.shape[-1],))  # noqa: E731
    mlp = lambda t, p: F.linear(F.silu(F.linear(t, T[p + ".fc1.weight"])), T[p + ".fc2.weight"])  # noqa: E731
    D, H, Hkv, hd, p = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.patch_size
    rows, cols = cfg.grid
    # NoiseConditioner
    freq = torch.logspace(0, -1, steps=cfg.noise_features // 2, base=10000.0, dtype=torch.float64)
    phase = sigma * 1000 * freq
    cond = mlp((torch.cat([torch.sin(phase), torch.cos(phase)]) * 2**0.5).float(), "denoise_step_emb.mlp")
    ctrl = mlp(torch.cat([mouse, button, scroll]), "ctrl_emb.mlp")
    tok = F.conv2d(x[None], T["patchify.weight"], stride=p)[0].flatten(1).T  # [N, D], row-major
    # OrthoRoPEAngles (in float64 here)
    dxy, dt = hd // 8, hd // 4
    n = (dxy + 1) // 2
    xy = (torch.linspace(1.0, min(rows, cols) * cfg.rope_nyquist / 2, n, dtype=torch.float64)
          * math.pi).repeat_interleave(2)[:dxy]
    inv_t = (1.0 / cfg.rope_theta ** (torch.arange(0, dt, 2, dtype=torch.float64) / dt)).repeat_interleave(2)
    idx = torch.arange(rows * cols)
    px = (2.0 * (idx % cols) + 1) / cols - 1
    py = (2.0 * (idx // cols) + 1) / rows - 1
    ang = torch.cat([px[:, None] * xy, py[:, None] * xy, torch.full((rows * cols, 1), float(frame)) * inv_t], -1)
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(t):  # [h, N, hd]
        x0, x1 = t.unfold(-1, 2, 2).unbind(-1)
        return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1)

    v1 = None
    for i in range(cfg.depth):
        b = f"transformer.blocks.{i}."
        heads = [F.linear(F.silu(cond + T[b + f"{h}.bias_in"]), T[b + f"{h}.cond_proj.{j}.weight"])
                 for h in ("attn_cond_head", "mlp_cond_head") for j in range(3)]
        s0, b0, g0, s1, b1, g1 = heads
        h_ = rms(tok) * (1 + s0) + b0
        q = F.linear(h_, T[b + "attn.q_proj.weight"]).view(-1, H, hd).transpose(0, 1)
        k = F.linear(h_, T[b + "attn.k_proj.weight"]).view(-1, Hkv, hd).transpose(0, 1)
        v = F.linear(h_, T[b + "attn.v_proj.weight"]).view(-1, Hkv, hd).transpose(0, 1)
        v1 = v if v1 is None else v1
        v = torch.lerp(v, v1, T[b + "attn.v_lamb"])
        q, k = rope(rms(q)), rope(rms(k))
        y = F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True)[0]
        tok = F.linear(y.transpose(0, 1).reshape(-1, D), T[b + "attn.out_proj.weight"]) * g0 + tok
        if b + "ctrl_mlpfusion.fc2.weight" in T:
            hx = F.linear(rms(tok), T[b + "ctrl_mlpfusion.fc1_x.weight"])
            hc = F.linear(rms(ctrl), T[b + "ctrl_mlpfusion.fc1_c.weight"])
            tok = F.linear(F.silu(hx + hc), T[b + "ctrl_mlpfusion.fc2.weight"]) + tok
        tok = mlp(rms(tok) * (1 + s1) + b1, b + "dit_mlp") * g1 + tok
    a, b_ = F.linear(F.silu(cond), T["out_norm.fc.weight"]).chunk(2)
    tok = F.silu(rms(tok) * (1 + a) + b_)
    grid = tok.T.reshape(1, D, rows, cols)
    return F.conv_transpose2d(grid, T["unpatchify.weight"], T["unpatchify.bias"], stride=p)[0]


def upstream_taehv_decode(S, cfg, latents):
    """TAEHV.decode_video (parallel, untrimmed) on the checkpoint's nn.Sequential indices. latents [T, C, h, w]."""
    W = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in S.items()}
    conv = lambda x, i, bias=True: F.conv2d(x, W[f"decoder.{i}.weight"], W.get(f"decoder.{i}.bias"), padding=1)  # noqa

    def memblock(x, i, T_):
        past = torch.cat([torch.zeros_like(x[:1]), x[:-1]]) if T_ == x.shape[0] else None
        h = torch.cat([x, past], 1)
        for j, act in ((0, True), (2, True), (4, False)):
            h = F.conv2d(h, W[f"decoder.{i}.conv.{j}.weight"], W[f"decoder.{i}.conv.{j}.bias"], padding=1)
            h = F.relu(h) if act else h
        return F.relu(h + x)

    x = F.relu(conv(torch.tanh(latents / 3) * 3, 1))
    for k, (blocks, grow, c) in enumerate([((3, 4, 5), 7, 8), ((9, 10, 11), 13, 14), ((15, 16, 17), 19, 20)]):
        for i in blocks:
            x = memblock(x, i, x.shape[0])
        x = F.interpolate(x, scale_factor=2)
        stride = 2 if cfg.taehv.time_upscale[k] else 1
        w = W[f"decoder.{grow}.conv.weight"]
        w = w[-x.shape[1] * stride:]  # TAEHV.patch_tgrow_layers
        C_ = x.shape[1]
        x = F.conv2d(x, w).reshape(-1, C_, *x.shape[2:])
        x = F.conv2d(x, W[f"decoder.{c}.weight"], padding=1)
    x = F.conv2d(F.relu(x), W["decoder.22.weight"], W["decoder.22.bias"], padding=1)
    return F.pixel_shuffle(x, cfg.taehv.patch_size).clamp(0, 1)


def test_converted_model_computes_the_upstream_formulas(fixture_dir, converted):
    out, cfg = converted
    model = nfd_rt.export.load(out)
    U = {k: cw.SafetensorsFile(fixture_dir / "model.safetensors").array(k)
         for k in cw.upstream_shapes(cfg)}
    r = np.random.default_rng(0)
    x = torch.from_numpy(r.standard_normal((cfg.latent_channels, cfg.latent_height,
                                            cfg.latent_width)).astype(np.float32))
    c = wp.controls(cfg, buttons={0, 4}, mouse=(0.3, -1.1), scroll=1)
    for sigma, frame in ((0.9, 0), (0.3, 37)):
        want = upstream_velocity(U, cfg, x, sigma, *(torch.from_numpy(c[s]) for s in (slice(0, 2), slice(2, -1),
                                                                                      slice(-1, None))), frame)
        with torch.no_grad():
            got = model.dit.forward_frames(
                x[None, None], torch.tensor([[sigma]]), torch.from_numpy(c)[None, None], torch.tensor([frame]),
                lambda layer, q, k, v: wp.gqa_attention(q[:, 0], k[:, 0], v[:, 0])[:, None])[0, 0]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    st = cw.SafetensorsFile(fixture_dir / "taehv" / "taehv1_5.safetensors")
    S = {k: st.array(k) for k in st.entries}
    lat = torch.from_numpy(r.standard_normal((3, cfg.latent_channels, cfg.latent_height,
                                              cfg.latent_width)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(model.taehv.decoder(lat[None])[0], upstream_taehv_decode(S, cfg, lat), atol=1e-5)


def test_docs_fixture_snippet_runs(tmp_path, monkeypatch, capsys):
    """docs/waypoint.md's 'try it without the weights' block, run as written: the reference, then the C++ runtime."""
    import re

    from nfd_testfiles import REPO

    text = open(os.path.join(REPO, "docs", "waypoint.md")).read()
    m = re.search(r"<!-- test: waypoint-fixture -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/waypoint.md has no python block marked <!-- test: waypoint-fixture -->"
    monkeypatch.chdir(tmp_path)
    exec(compile(m.group(1), "docs/waypoint.md", "exec"), {})
    assert capsys.readouterr().out.split() == "(4, 72, 128, 3) uint8 (4, 72, 128, 3) uint8".split()


def test_export_random_waypoint(tmp_path, capsys):
    from nfd_rt.cli import main

    out = tmp_path / "r.nfd"
    assert main(["export-random", "waypoint-tiny", "-o", str(out), "--seed", "2"]) == 0
    assert isinstance(nfd_rt.export.load(out), wp.WaypointModel)
