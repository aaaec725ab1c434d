"""Where things are, for tests at any depth of tests/: the repository root and the shared data beside it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION_DEV = ROOT.parent / "shared" / "data" / "fashion-dev"
