"""Every benchmark script still imports and explains itself: a script that calls a renamed or removed library name
fails here, not months later when someone needs its figure (ruff does not see a missing attribute)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_there_are_bench_scripts() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_help(script: Path) -> None:
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower(), res.stdout[:500]
