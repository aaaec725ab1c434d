"""A lock held by another process, as a running `train` or `index` holds it: for the tests of busy paths."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLD = ("import sys; from enclip_qdrant.files import locked\n"
        "with locked(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()")


@contextmanager
def held_elsewhere(path: Path) -> Iterator[None]:
    """`locked(path)` held by a child process from the moment the block starts until it ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("\n", timeout=30)
