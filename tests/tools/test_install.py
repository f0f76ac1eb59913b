"""The installed package as pip leaves it: libraries that find their dependencies with no build tree around."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

import nfd_rt


def installed_libraries() -> list[str]:
    try:
        lib_dir = nfd_rt.lib_dir()
    except FileNotFoundError:
        pytest.skip("nfd_rt is not installed (running from a source tree): pip install . first")
    pkg = os.path.dirname(os.path.abspath(nfd_rt.__file__))
    return glob.glob(os.path.join(lib_dir, "libnfd_rt.so*")) + glob.glob(os.path.join(pkg, "_core*.so"))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
def test_rpaths_point_inside_the_installation():
    """No RUNPATH entry may name the temporary folder pip built the wheel in (deleted afterwards): every entry is
    $ORIGIN-relative or an existing folder."""
    libs = installed_libraries()
    assert libs
    for lib in libs:
        out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
        for m in re.finditer(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out):
            for entry in m.group(1).split(":"):
                assert entry.startswith("$ORIGIN") or os.path.isdir(entry), f"{lib}: rpath entry {entry!r}"
                assert "pip-build-env" not in entry, f"{lib}: rpath into pip's build environment: {entry}"
