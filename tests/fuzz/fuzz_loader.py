"""Fuzz the .nfd loader (nfd_rt._core.validate_bytes) with atheris.

    pip install atheris
    python tests/fuzz/fuzz_loader.py -atheris_runs=20000 [corpus_dir]      (libFuzzer flags work)

The seed corpus (valid micro files and a few header-level variants) is written to tests/fuzz/corpus/ on first
use. Any exception other than the loader's NFDFormatError, or a crash, is a bug. With gcc builds the C++ code is
not coverage-instrumented, so atheris mutates blindly there; run it against the ASan build (tools/ci/sanitize.sh)
to catch memory errors.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ for nfd_testfiles

import atheris  # noqa: E402

with atheris.instrument_imports():
    from nfd_rt import _core
    from nfd_rt.export import NFDFormatError

from nfd_testfiles import MICRO, join, random_nfd, split  # noqa: E402


def write_corpus(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    valid = random_nfd(MICRO, seed=0)
    header, body = split(valid)
    seeds = {"valid": valid, "header_only": join(header, b""), "no_metadata": join({}, b""),
             "empty_tensors": join({"__metadata__": header["__metadata__"]}, b"")}
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def test_one_input(data: bytes) -> None:
    try:
        _core.validate_bytes(data)
    except NFDFormatError as e:
        assert str(e).startswith("<bytes>: ")


def main() -> None:
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):
        corpus = os.path.join(HERE, "corpus")
        if not os.path.isdir(corpus):
            write_corpus(corpus)
        args.append(corpus)
    atheris.Setup([sys.argv[0], "-max_len=65536", *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
