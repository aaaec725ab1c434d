"""Facts of the machine the library sizes itself by (cores this process may use)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
