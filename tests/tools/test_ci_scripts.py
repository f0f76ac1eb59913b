"""The CI scripts themselves: no step may fail at random."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / ".ci" / "run", *sorted((ROOT / "tools").rglob("*.sh"))]


def early_exit_readers(line: str) -> list[str]:
    """The commands of a pipeline that may stop reading before the writer is done (`head`, `grep -q`, `grep -m`).

    Under `set -o pipefail` such a pipeline fails whenever the writer is still writing when the reader exits:
    the writer dies of SIGPIPE (status 141), which depends on timing, so the step fails at random."""
    code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
    found = []
    readers = [seg for part in re.split(r"\|\||&&|;", code) for seg in part.split("|")[1:]]
    for segment in readers:  # every command that reads a pipe
        try:
            words = shlex.split(segment)
        except ValueError:
            words = segment.split()
        if not words:
            continue
        if words[0] == "head":
            found.append(segment.strip())
        elif words[0] == "grep" and any(
                w in ("--quiet", "--silent") or w.startswith("--max-count")
                or (re.fullmatch(r"-[A-Za-z0-9]+", w) and re.search("[qm]", w)) for w in words[1:]):
            found.append(segment.strip())
    return found


def test_no_pipeline_into_an_early_exiting_reader_under_pipefail():
    """`ldd lib | grep -q openblas` under pipefail made CI red at random (issue 24): `grep -q` exits at the first
    match, ldd can die of SIGPIPE. Capture the output first (`out=$(ldd lib)`) and grep that."""
    assert SCRIPTS[0].exists() and len(SCRIPTS) >= 4
    bad = [f"{p.relative_to(ROOT)}:{i}: {hit}"
           for p in SCRIPTS if "pipefail" in p.read_text()
           for i, line in enumerate(p.read_text().splitlines(), 1)
           for hit in early_exit_readers(line)]
    assert not bad, "pipelines that fail at random under pipefail:\n" + "\n".join(bad)


def test_the_check_finds_the_pattern():
    assert early_exit_readers('ldd "$L" | grep -q "libopenblas" || exit 1') == ['grep -q "libopenblas"']
    assert early_exit_readers("free -g | head -2")
    assert early_exit_readers("dmesg | grep -m1 -i error")
    assert not early_exit_readers("objdump -d x.so | grep -c zmm || true")  # -c reads everything
    assert not early_exit_readers("pip list | grep -iE 'torch|cutlass' || true")
    assert not early_exit_readers("grep -q avx2 /proc/cpuinfo || exit 0")  # no pipe


def test_run_outputs_are_ignored_by_git():
    """`nfd-rt demo` in the checkout writes nfd_demo.mp4 (or a .gif); results go to out/: not for committing.
    The pictures the docs show stay tracked."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    assert all(ignored(p) for p in ("nfd_demo.mp4", "demo.gif", "out/result.json"))
    assert not any(ignored(p) for p in ("docs/images/demo.gif", "docs/images/new.gif", "tests/api/test_cli.py"))
