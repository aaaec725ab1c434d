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
from dataclasses import dataclass
from pathlib import Path

from paths import free_port

FIXED_BIN = Path.home() / ".qdrant" / "bin" / "qdrant"


def qdrant_binary() -> Path | None:
    given = os.environ.get("QDRANT_BIN")
    path = Path(given) if given else FIXED_BIN
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass(frozen=True)
class Node:
    """One running Qdrant: its REST URL, gRPC port and API key (None: open)."""

    url: str
    grpc_port: int
    api_key: str | None = None

    def store(self, transport: str = "rest", timeout: float = 30):
        """A ServerStore on this node over REST or gRPC, with its key."""
        from enclip_qdrant.store import ServerOptions, ServerStore

        options = ServerOptions(prefer_grpc=transport == "grpc", grpc_port=self.grpc_port, timeout=timeout)
        return ServerStore(self.url, self.api_key, options=options)


SERVER_VARIANTS = ("server-rest", "server-grpc", "server-key")


def server_store(request, variant: str, timeout: float = 30):
    """A ServerStore on a real node for one contract variant: REST, gRPC (prefer_grpc), or REST with an API key."""
    node = request.getfixturevalue("qdrant_key_node" if variant == "server-key" else "qdrant_node")
    return node.store("grpc" if variant == "server-grpc" else "rest", timeout=timeout)


def given_node() -> Node | None:
    """The server named by QDRANT_URL (gRPC port QDRANT_GRPC_PORT, else 6334; key QDRANT_API_KEY), if any."""
    url = os.environ.get("QDRANT_URL")
    if not url:
        return None
    return Node(url, int(os.environ.get("QDRANT_GRPC_PORT") or 6334), os.environ.get("QDRANT_API_KEY") or None)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float, log: Path) -> None:
    """Until /readyz answers 200 (no key needed there); fails early when the process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"Qdrant at {url} did not become ready; its log: {log}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM by PID, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _nice(binary: Path) -> list[str]:
    """Servers run at lower priority: this machine's cores are shared."""
    nice = shutil.which("nice")
    return [nice, "-n", "10", str(binary)] if nice else [str(binary)]


@contextmanager
def local_qdrant(binary: Path, timeout: float = 60.0, api_key: str | None = None) -> Iterator[Node]:
    """One single-node Qdrant on 127.0.0.1 with fresh storage (and `api_key`, when given); yields its Node."""
    root = Path(tempfile.mkdtemp(prefix="enclip-qdrant-"))
    http, grpc = free_port(), free_port()
    env = {**os.environ, "QDRANT__SERVICE__HOST": "127.0.0.1", "QDRANT__SERVICE__HTTP_PORT": str(http),
           "QDRANT__SERVICE__GRPC_PORT": str(grpc), "QDRANT__STORAGE__STORAGE_PATH": str(root / "storage"),
           "QDRANT__STORAGE__SNAPSHOTS_PATH": str(root / "snapshots"), "QDRANT__TELEMETRY_DISABLED": "true",
           "QDRANT__CLUSTER__ENABLED": "false"}
    env.pop("QDRANT__SERVICE__API_KEY", None)
    if api_key:
        env["QDRANT__SERVICE__API_KEY"] = api_key
    log = (root / "qdrant.log").open("wb")
    proc = subprocess.Popen(_nice(binary), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        wait_ready(url, proc, timeout, root / "qdrant.log")
        yield Node(url, grpc, api_key)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
