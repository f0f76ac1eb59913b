"""A short soak in CI (benchmarks/soak.py runs the long one: 100,000 frames, results committed): memory stays flat
while the cache rolls over many times."""

from __future__ import annotations

import os
import sys

from nfd_testfiles import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import soak  # noqa: E402


def test_memory_flat_over_a_rolling_cache():
    from nfd_rt.demo import MODEL_PATH

    r = soak.run(MODEL_PATH, frames=1000, block=200, threads=1)
    s = r["summary"]
    assert len(r["blocks"]) == 5 and r["blocks"][-1]["frames_done"] == 1000
    # 1000 frames roll the 9-slot cache over 100 times; after the first block nothing new is allocated.
    assert abs(s["rss_growth_bytes"]) <= 0.01 * s["rss_first_bytes"], s
    assert r["blocks"][-1]["scratch_bytes"] == r["blocks"][1]["scratch_bytes"]
