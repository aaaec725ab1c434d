"""Where things are, for tests at any depth of tests/: the repository root, the shared data beside it, and a
free loopback port."""

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION_DEV = ROOT.parent / "shared" / "data" / "fashion-dev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
