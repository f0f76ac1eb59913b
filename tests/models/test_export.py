"""`.nfd` export: bit-exact round trip and clear errors on bad files."""

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")

import nfd_rt  # noqa: E402
from nfd_rt.export import NFDFormatError  # noqa: E402


def test_round_trip_is_bit_exact(tiny_model, tiny_nfd):
    loaded = nfd_rt.export.load(tiny_nfd)
    assert loaded.cfg == tiny_model.cfg
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def rewrite(path, out, edit_header=None, edit_tensors=None):
    """Re-pack a .nfd file with an edited header or edited tensors (via safetensors)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    meta = nfd_rt.export.read_header(path)[1].to_json()
    metadata = {"nfd_format_version": "1", "config": meta}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_missing_tensor_is_named(tiny_nfd, tmp_path):
    bad = rewrite(tiny_nfd, tmp_path / "m.nfd", edit_tensors=lambda t: t.pop("dit.blocks.1.qkv.weight"))
    with pytest.raises(NFDFormatError, match="missing tensor 'dit.blocks.1.qkv.weight'"):
        nfd_rt.export.load(bad)


def test_wrong_shape_is_named(tiny_nfd, tmp_path):
    def edit(t):
        t["dit.final.linear.bias"] = np.zeros(3, np.float32)

    bad = rewrite(tiny_nfd, tmp_path / "m.nfd", edit_tensors=edit)
    with pytest.raises(NFDFormatError, match=r"'dit.final.linear.bias' has shape \[3\], expected \[16\]"):
        nfd_rt.export.load(bad)


def test_wrong_dtype_is_named(tiny_nfd, tmp_path):
    def edit(t):
        t["dit.final.linear.bias"] = t["dit.final.linear.bias"].astype(np.float16)

    bad = rewrite(tiny_nfd, tmp_path / "m.nfd", edit_tensors=edit)
    with pytest.raises(NFDFormatError, match="'dit.final.linear.bias' has dtype F16, expected F32"):
        nfd_rt.export.load(bad)


def test_unknown_version(tiny_nfd, tmp_path):
    bad = rewrite(tiny_nfd, tmp_path / "m.nfd", edit_header=lambda m: m.update(nfd_format_version="99"))
    with pytest.raises(NFDFormatError, match="unknown nfd_format_version '99'"):
        nfd_rt.export.load(bad)


def test_random_bytes_and_truncation(tiny_nfd, tmp_path):
    junk = tmp_path / "junk.nfd"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(NFDFormatError, match=r"junk.nfd: not a .nfd \(safetensors\) file: its first 8 bytes give a "
                       "header length of"):
        nfd_rt.export.load(junk)
    short = tmp_path / "short.nfd"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(NFDFormatError, match="too short"):
        nfd_rt.export.load(short)
    data = tiny_nfd.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    for cut in (8 + n // 2, 8 + n + 100, len(data) - 1):
        t = tmp_path / f"cut{cut}.nfd"
        t.write_bytes(data[:cut])
        with pytest.raises(NFDFormatError):
            nfd_rt.export.load(t)


def test_json_garbage_and_foreign_safetensors(tmp_path):
    bad = tmp_path / "garbage.nfd"
    body = b"{not json"
    bad.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(NFDFormatError, match="not valid JSON"):
        nfd_rt.export.load(bad)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(NFDFormatError, match="not a .nfd file"):
        nfd_rt.export.load(foreign)


def test_export_cli_from_state_dict_and_checkpoint(tiny_model, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "tools" / "export" / "export.py"
    sd = tmp_path / "sd.pt"
    torch.save(tiny_model.state_dict(), sd)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": tiny_model.state_dict(), "config": tiny_model.cfg.to_dict(), "step": 10}, ckpt)
    for src, extra in ((sd, ["--config", "tiny"]), (ckpt, [])):
        out = tmp_path / (src.stem + ".nfd")
        subprocess.run([sys.executable, str(script), str(src), "-o", str(out), *extra], check=True)
        loaded = nfd_rt.export.load(out).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in tiny_model.state_dict().items())
    r = subprocess.run([sys.executable, str(script), str(sd), "-o", str(tmp_path / "x.nfd")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--config" in r.stderr


def test_header_is_json_with_config(tiny_nfd):
    data = tiny_nfd.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header["__metadata__"]
    assert meta["nfd_format_version"] == "1"
    assert json.loads(meta["config"])["name"] == "tiny"


def test_write_nfd_matches_safetensors_layout(tiny_model, tmp_path):
    """The pure-Python writer (used without torch) produces files the safetensors loader reads back."""
    sd = {k: v.numpy() for k, v in tiny_model.state_dict().items()}
    out = tmp_path / "np.nfd"
    nfd_rt.export.write_nfd(sd, tiny_model.cfg, out)
    loaded = nfd_rt.export.load(out).state_dict()
    assert all(np.array_equal(loaded[k].numpy(), v) for k, v in sd.items())
