"""The .nfd loader: every malformed file is rejected with a message naming the problem, never a crash.

Checked through the Python binding (`_core.validate_bytes` / `inspect_file`) and through the C ABI
(`nfd_model_validate` / `nfd_session_open` via ctypes on libnfd_rt.so).
"""

from __future__ import annotations

import ctypes
import json
import random
import struct

import numpy as np
import pytest

from nfd_rt import configs
from nfd_rt.export import NFDFormatError

from nfd_testfiles import MICRO, find_c_library, join, random_nfd, split

_core = pytest.importorskip("nfd_rt._core", reason="the compiled extension nfd_rt._core is not built")


@pytest.fixture(scope="module")
def micro() -> bytes:
    return random_nfd(MICRO, seed=1)


def check(data: bytes, *fragments: str) -> str:
    """validate_bytes must raise NFDFormatError whose message holds every fragment."""
    with pytest.raises(NFDFormatError) as e:
        _core.validate_bytes(data, "m.nfd")
    msg = str(e.value)
    assert msg.startswith("m.nfd: "), msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def mutate(data: bytes, fn) -> bytes:
    header, body = split(data)
    fn(header)
    return join(header, body)


# -- valid files ----------------------------------------------------------------------------------------------------
def test_valid_micro_file(micro):
    d = _core.validate_bytes(micro)
    assert d["format_version"] == 1
    assert configs.NFDConfig.from_json(d["config"]) == MICRO
    assert set(d["tensors"]) == {n for n, _ in _core.expected_tensors(MICRO.to_json())}


@pytest.mark.parametrize("name", configs.names())
def test_expected_tensors_match_state_dict(name):
    torch = pytest.importorskip("torch", reason="the state_dict comparison needs the PyTorch reference model")
    from nfd_rt.reference import NFDModel

    cfg = configs.get(name)
    with torch.device("meta"):  # shapes only: no memory for the 310m weights
        model = NFDModel(cfg, init_seed=None)
    want = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    got = [(k, list(s)) for k, s in _core.expected_tensors(cfg.to_json())]
    assert got == want


def test_exported_file_inspects(tmp_path):
    pytest.importorskip("torch", reason="exporting needs the PyTorch reference model")
    from nfd_rt import export
    from nfd_rt.reference import NFDModel

    cfg = configs.get("tiny")
    path = tmp_path / "tiny.nfd"
    export.save(NFDModel(cfg), path)
    d = _core.inspect_file(str(path))
    assert configs.NFDConfig.from_json(d["config"]) == cfg
    header, _ = export.read_header(path)
    assert {k: (v["shape"], tuple(v["data_offsets"])) for k, v in header.items()} == {
        k: (v["shape"], tuple(v["data_offsets"])) for k, v in d["tensors"].items()}


# -- structure ------------------------------------------------------------------------------------------------------
def test_truncated_at_many_offsets(micro):
    (n,) = struct.unpack("<Q", micro[:8])
    offsets = sorted({0, 1, 4, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(micro) - 4, len(micro) - 1}
                     | set(np.linspace(0, len(micro) - 1, 40, dtype=int).tolist()))
    for off in offsets:
        data = micro[:off]
        if off < 8:
            check(data, f"file is {off} bytes, too short")
        elif off < 8 + n:
            check(data, f"header length {n} runs past the end of the {off}-byte file")
        else:
            check(data, "past the end of the", f"{off - 8 - n}-byte data section")
    _core.validate_bytes(micro)  # the whole file is fine


def test_random_bytes_never_crash():
    rng = random.Random(0)
    for i in range(300):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        if i % 3 == 0 and len(data) >= 8:  # a plausible header length, so the JSON parser sees garbage
            data = struct.pack("<Q", len(data) - 8) + data[8:]
        with pytest.raises(NFDFormatError):
            _core.validate_bytes(data)


def test_header_length_past_eof(micro):
    check(struct.pack("<Q", len(micro)) + micro[8:], f"header length {len(micro)} runs past the end")
    check(struct.pack("<Q", 2**64 - 1) + micro[8:], "not a .nfd (safetensors) file: its first 8 bytes give a "
          f"header length of {2**64 - 1}, over the limit")


def test_a_text_file_is_not_a_nfd_file(tmp_path):
    """A text file renamed .nfd: its first 8 bytes read as an absurd header length; say what the file is not."""
    path = tmp_path / "notes.nfd"
    path.write_text("some notes, not a model\n" * 10)
    with pytest.raises(NFDFormatError, match=r"notes.nfd: not a .nfd \(safetensors\) file"):
        _core.inspect_file(str(path))
    from nfd_rt.export import read_header

    with pytest.raises(NFDFormatError, match=r"notes.nfd: not a .nfd \(safetensors\) file"):
        read_header(path)


@pytest.mark.parametrize("text,fragment", [
    (b"{not json", "header is not valid JSON"),
    (b"[1, 2, 3]", "header is not a JSON object"),
    (b'{"a": 1', "header is not valid JSON"),
    (b"\xff\xfe{}", "header is not valid JSON"),
    (b"[" * 100000, "header is not valid JSON"),          # deep nesting: no stack overflow
    (b"[" * 50000 + b"]" * 50000, "header is not a JSON object"),
    (b"{}", "not a .nfd file"),
    (b'{"__metadata__": {"format": "pt"}}', "not a .nfd file"),
])
def test_bad_json(text, fragment):
    check(struct.pack("<Q", len(text)) + text, fragment)


def test_unknown_version(micro):
    check(mutate(micro, lambda h: h["__metadata__"].update(nfd_format_version="2")),
          "unknown nfd_format_version \"2\"", "reads 1")


def test_missing_config(micro):
    check(mutate(micro, lambda h: h["__metadata__"].pop("config")), "metadata has no config")


@pytest.mark.parametrize("change,fragment", [
    ({"hidden_size": "16"}, "field 'hidden_size' must be an integer, got string"),
    ({"hidden_size": 16.0}, "field 'hidden_size' must be an integer, got number"),
    ({"depth": True}, "field 'depth' must be an integer, got boolean"),
    ({"num_heads": 3}, "hidden_size 16 is not divisible by num_heads 3"),
    ({"rope_dims": [2, 2, 2]}, "must sum to head_dim 8"),
    ({"rope_dims": [1, 3, 4]}, "must all be even"),
    ({"rope_dims": [2, 6]}, "field 'rope_dims' must have 3 entries"),
    ({"frame_height": 100000}, "field 'frame_height' = 100000 is out of range"),
    ({"frame_height": 17}, "frame 17x16 is not divisible by the VAE factor 2"),
    ({"frame_height": 18}, "latent 9x8 is not divisible by patch_size 2"),
    ({"patch_size": 3}, "is not divisible by patch_size 3"),
    ({"schedule": [0.75, 0.5]}, "schedule must start at 1.0 and decrease"),
    ({"schedule": [1.0, 0.5, 0.75]}, "schedule must start at 1.0 and decrease"),
    ({"schedule": [1.0, 0.0]}, "must stay above 0"),
    ({"schedule": []}, "field 'schedule' must have 1..1000 entries"),
    ({"context_noise": 1.0}, "context_noise"),
    ({"window": 1000, "sink_frames": 100}, "window + sink_frames = 1100 exceeds the limit 1023"),
    ({"window": -1}, "field 'window' = -1 is out of range"),
    ({"action_dim": 0}, "field 'action_dim' = 0 is out of range"),
    ({"norm_eps": 0}, "field 'norm_eps'"),
    ({"hidden_size": 16384, "num_heads": 128, "rope_dims": [42, 44, 42], "depth": 256, "window": 1000,
      "frame_height": 4096, "frame_width": 4096, "vae": {"channels": [4, 4, 4, 4], "num_res_blocks": 1,
                                                          "norm_groups": 2, "norm_eps": 1e-6}},
     "KV cache would need"),
    ({"vae": {"channels": [4, 6], "num_res_blocks": 1, "norm_groups": 4, "norm_eps": 1e-6}},
     "must be divisible by norm_groups 4"),
    ({"vae": {"channels": [4, 4], "num_res_blocks": 1, "norm_groups": 2}}, "missing field 'vae.norm_eps'"),
    ({"vae": [4, 4]}, "field 'vae' must be an object"),
    ({"turbo": 1}, "unknown field 'turbo'"),
])
def test_bad_config(micro, change, fragment):
    def edit(h):
        cfg = json.loads(h["__metadata__"]["config"])
        cfg.update(change)
        h["__metadata__"]["config"] = json.dumps(cfg)

    check(mutate(micro, edit), "bad config", fragment)


def test_config_missing_field(micro):
    def edit(h):
        cfg = json.loads(h["__metadata__"]["config"])
        del cfg["window"]
        h["__metadata__"]["config"] = json.dumps(cfg)

    check(mutate(micro, edit), "missing field 'window'")
    check(mutate(micro, lambda h: h["__metadata__"].update(config="{oops")), "config is not valid JSON")


# -- tensors --------------------------------------------------------------------------------------------------------
def test_missing_tensor(micro):
    check(mutate(micro, lambda h: h.pop("dit.final.linear.bias")), "missing tensor 'dit.final.linear.bias'")


def test_wrong_shape_same_bytes(micro):
    def edit(h):
        h["dit.patch_embed.weight"]["shape"] = [8, 16]

    check(mutate(micro, edit), "tensor 'dit.patch_embed.weight' has shape [8, 16], expected [16, 8]")


def test_shape_disagrees_with_byte_span(micro):
    check(mutate(micro, lambda h: h["dit.patch_embed.weight"].update(shape=[3, 4])),
          "tensor 'dit.patch_embed.weight' has shape [3, 4] (48 bytes as F32) but data_offsets span 512 bytes")


@pytest.mark.parametrize("dtype,fragment", [("F16", "unsupported dtype F16"), ("BF16", "unsupported dtype BF16"),
                                            ("I64", "unsupported dtype I64"), ("Q4_K", "unknown dtype \"Q4_K\"")])
def test_wrong_dtype(micro, dtype, fragment):
    check(mutate(micro, lambda h: h["dit.patch_embed.bias"].update(dtype=dtype)),
          "tensor 'dit.patch_embed.bias'", fragment)


def test_overlapping_offsets(micro):
    def edit(h):
        a, b = h["dit.patch_embed.bias"], h["dit.patch_embed.weight"]
        size = b["data_offsets"][1] - b["data_offsets"][0]
        start = a["data_offsets"][0]
        b["data_offsets"] = [start, start + size]

    check(mutate(micro, edit), "overlap", "dit.patch_embed.bias", "dit.patch_embed.weight")


def test_unexpected_tensor(micro):
    check(mutate(micro, lambda h: h.update(extra={"dtype": "F32", "shape": [0], "data_offsets": [0, 0]})),
          "unexpected tensor 'extra' (not part of a micro model)")


@pytest.mark.parametrize("entry,fragment", [
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "not an integer >= 0"),
    ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "not an integer >= 0"),
    ({"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}, "overflows 64 bits"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "begin > end"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "needs data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "needs data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}, "not 4-byte aligned"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [2**64 - 4, 2**64 - 1]}, "past the end of the"),
    ({"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}, "rank 9"),
    ({"shape": [1], "data_offsets": [0, 4]}, "has no dtype"),
    ({"dtype": "F32", "data_offsets": [0, 4]}, "has no shape"),
    ([1, 2], "entry is not a JSON object"),
])
def test_malformed_entry(micro, entry, fragment):
    check(mutate(micro, lambda h: h.update({"aaa.first": entry})), "tensor 'aaa.first'", fragment)


def test_random_mutations_never_crash(micro):
    """Byte flips in the header and random truncations: a valid file or NFDFormatError, nothing else."""
    (n,) = struct.unpack("<Q", micro[:8])
    rng = random.Random(1)
    for _ in range(400):
        data = bytearray(micro)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(0, 8 + n)] = rng.getrandbits(8)
        if rng.random() < 0.3:
            del data[rng.randrange(0, len(data)):]
        try:
            _core.validate_bytes(bytes(data))
        except NFDFormatError as e:
            assert str(e)


def test_file_errors(tmp_path, micro):
    with pytest.raises(OSError, match="cannot open"):
        _core.inspect_file(str(tmp_path / "missing.nfd"))
    with pytest.raises(OSError, match="not a regular file"):
        _core.inspect_file(str(tmp_path))
    (tmp_path / "short.nfd").write_bytes(b"abc")
    with pytest.raises(NFDFormatError, match="short.nfd: file is 3 bytes"):
        _core.inspect_file(str(tmp_path / "short.nfd"))
    (tmp_path / "ok.nfd").write_bytes(micro)
    assert len(_core.inspect_file(str(tmp_path / "ok.nfd"))["tensors"]) == len(
        _core.expected_tensors(MICRO.to_json()))


# -- the same loader through the C ABI ------------------------------------------------------------------------------
NFD_OK, NFD_ERROR_INVALID_ARGUMENT, NFD_ERROR_INVALID_FILE, NFD_ERROR_IO = 0, 1, 2, 3


@pytest.fixture(scope="module")
def clib():
    path = find_c_library()
    if path is None:
        pytest.skip("libnfd_rt.so not found (build it, or set NFD_RT_LIB)")
    lib = ctypes.CDLL(path)
    lib.nfd_last_error.restype = ctypes.c_char_p
    lib.nfd_model_validate.argtypes = [ctypes.c_char_p]
    lib.nfd_session_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.nfd_session_step.argtypes = [ctypes.c_void_p] * 4
    lib.nfd_session_reset.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    lib.nfd_session_close.argtypes = [ctypes.c_void_p]
    lib.nfd_status_name.restype = ctypes.c_char_p
    return lib


def c_validate(lib, path) -> tuple[int, str]:
    rc = lib.nfd_model_validate(str(path).encode())
    return rc, lib.nfd_last_error().decode()


def test_c_abi_reports_the_same_errors(clib, tmp_path, micro):
    cases = {
        "trunc.nfd": micro[: len(micro) // 2],
        "version.nfd": mutate(micro, lambda h: h["__metadata__"].update(nfd_format_version="7")),
        "shape.nfd": mutate(micro, lambda h: h["dit.patch_embed.weight"].update(shape=[8, 16])),
        "dtype.nfd": mutate(micro, lambda h: h["dit.patch_embed.bias"].update(dtype="F16")),
        "missing.nfd": mutate(micro, lambda h: h.pop("vae.decoder.conv_out.bias")),
        "garbage.nfd": b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        rc, msg = c_validate(clib, path)
        with pytest.raises(NFDFormatError) as e:
            _core.inspect_file(str(path))
        assert rc == NFD_ERROR_INVALID_FILE, (name, rc, msg)
        assert msg == str(e.value) and msg.startswith(str(path)), (msg, str(e.value))
    (tmp_path / "ok.nfd").write_bytes(micro)
    assert c_validate(clib, tmp_path / "ok.nfd") == (NFD_OK, "")
    rc, msg = c_validate(clib, tmp_path / "nope.nfd")
    assert rc == NFD_ERROR_IO and "cannot open" in msg
    assert clib.nfd_model_validate(None) == NFD_ERROR_INVALID_ARGUMENT
    assert b"NULL" in clib.nfd_last_error()
    assert clib.nfd_status_name(NFD_ERROR_INVALID_FILE) == b"NFD_ERROR_INVALID_FILE"


def test_c_abi_open_and_null_arguments(clib, tmp_path, micro):
    bad = tmp_path / "bad.nfd"
    bad.write_bytes(micro[:100])
    s = ctypes.c_void_p(1234)
    assert clib.nfd_session_open(str(bad).encode(), None, ctypes.byref(s)) == NFD_ERROR_INVALID_FILE
    assert s.value is None  # *out is cleared on failure
    assert b"runs past the end" in clib.nfd_last_error()
    assert clib.nfd_session_open(None, None, ctypes.byref(s)) == NFD_ERROR_INVALID_ARGUMENT
    assert clib.nfd_session_open(str(bad).encode(), None, None) == NFD_ERROR_INVALID_ARGUMENT
    assert clib.nfd_session_step(None, None, None, None) == NFD_ERROR_INVALID_ARGUMENT
    assert clib.nfd_session_reset(None, None, 0, None) == NFD_ERROR_INVALID_ARGUMENT
    clib.nfd_session_close(None)  # a no-op
