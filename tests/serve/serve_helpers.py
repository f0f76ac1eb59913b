"""Shared by the `nfd-rt serve` tests: the server subprocess and the load script (benchmarks/serve_load.py)."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    """benchmarks/serve_load.py as a module: its ServerProcess starts `nfd-rt serve` the way a user does."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def need_serve_extra():
    for mod in ("fastapi", "uvicorn", "prometheus_client", "PIL", "websockets"):
        pytest.importorskip(mod, reason=f"needs the serve extra (pip install '.[serve]'): {mod} is missing")
    if importlib.util.find_spec("nfd_rt._core") is None:
        pytest.skip("nfd_rt._core is not built")


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
