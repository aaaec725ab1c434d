"""A real Qdrant for the tests, when this machine has one: `QDRANT_URL` (a server already running), or a server
binary that already exists (`QDRANT_BIN`, else the fixed place ~/.qdrant/bin/qdrant), started here on free
loopback ports with its own storage folder and stopped by its PID. Nothing is built or downloaded; without a
server the tests that need one skip with one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from paths import free_port

FIXED_BIN = Path.home() / ".qdrant" / "bin" / "qdrant"


def qdrant_binary() -> Path | None:
    given = os.environ.get("QDRANT_BIN")
    path = Path(given) if given else FIXED_BIN
    return path if path.is_file() and os.access(path, os.X_OK) else None


@contextmanager
def local_qdrant(binary: Path, timeout: float = 60.0) -> Iterator[str]:
    """One single-node Qdrant on 127.0.0.1 with fresh storage; yields its REST URL."""
    root = Path(tempfile.mkdtemp(prefix="enclip-qdrant-"))
    http, grpc = free_port(), free_port()
    env = {**os.environ, "QDRANT__SERVICE__HOST": "127.0.0.1", "QDRANT__SERVICE__HTTP_PORT": str(http),
           "QDRANT__SERVICE__GRPC_PORT": str(grpc), "QDRANT__STORAGE__STORAGE_PATH": str(root / "storage"),
           "QDRANT__STORAGE__SNAPSHOTS_PATH": str(root / "snapshots"), "QDRANT__TELEMETRY_DISABLED": "true",
           "QDRANT__CLUSTER__ENABLED": "false"}
    log = (root / "qdrant.log").open("wb")
    proc = subprocess.Popen([str(binary)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Qdrant at {binary} did not start; its log: {root / 'qdrant.log'}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
