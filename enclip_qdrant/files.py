"""Crash-consistent files and cross-process locks: the one place state files are written.

Every state file (manifests, training plans, member reports, workspace state, the embedded store's alias
file) is replaced whole: written to a temp file with a per-process name, fsynced, then renamed over the
target, so a reader (or a rerun after kill -9) sees the old file or the new one, never half of one.
Every read-modify-write of shared state runs under `locked()` so two processes never interleave.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import EnclipError

DEFAULT_LOCK_TIMEOUT = 600.0  # a second writer waits this long, then gets a clear "busy" error
_POLL = 0.05  # seconds between tries of a held lock


class BusyError(EnclipError):
    """Another enclip-qdrant process holds the lock on this state and did not release it in time."""


class DiskFullError(EnclipError):
    """The disk (or quota) is full: nothing was replaced, the previous file is intact."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one step (temp + fsync + rename); a full disk is one clear error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on the device to write {path}; free some space and run again "
                                "(nothing was lost)") from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (weights can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_copy(value: Any) -> Any:
    """A detached copy made of JSON's own types (dicts, lists, str, numbers): what a file or server gives back.
    TypeError/ValueError for what JSON cannot hold."""
    return json.loads(json.dumps(value))


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (a torn write counts as not written)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


class _RemovedOnRelease:
    """An flock on `<name>.lock` whose file is deleted when the last holder lets go, so no run leaves one behind.

    Deleting a lock file is safe only with a check: a waiter may have opened the old file before it went, so
    whoever wins the flock makes sure the path still names the file it locked, else tries again on the new one.
    One per path and process: re-entrant in the thread that holds it; other threads wait like processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd = -1

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._mutex.acquire(timeout=max(timeout, 0.0)):
            return False
        if self._depth:
            self._depth += 1
            return True
        try:
            fd = self._flock(deadline)
        except BaseException:  # a folder we cannot write, say: this thread must not keep the others out
            self._mutex.release()
            raise
        if fd is None:
            self._mutex.release()
            return False
        self._fd, self._depth = fd, 1
        return True

    def _flock(self, deadline: float) -> int | None:
        """An fd holding the flock on the file the path names now, or None once the deadline has passed."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(_POLL)
                continue
            except FileNotFoundError:  # the holder before us removed it after we opened it
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            with suppress(FileNotFoundError):  # unlinked while still held: a waiter then finds it gone, retries
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1
        self._mutex.release()


_LOCKS: dict[str, _RemovedOnRelease] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def locked(path: str | Path, *, timeout: float = DEFAULT_LOCK_TIMEOUT, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive cross-process lock on `path` (a `<name>.lock` file beside it, removed on release).

    Re-entrant within a thread. A second process (or thread) waits up to `timeout` seconds, then gets
    `BusyError` naming what is busy, instead of writing over the first one's files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve().with_name(path.name + ".lock"))
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, _RemovedOnRelease(key))
    if not lock.acquire(timeout):
        raise BusyError(f"{what or path} is busy: another enclip-qdrant process is using it; wait for it to "
                        "finish and run again")
    try:
        yield
    finally:
        lock.release()


def is_locked(path: str | Path) -> bool:
    """Whether another process (or thread) holds `locked(path)` now; takes and lets go of it when free."""
    try:
        with locked(path, timeout=0):
            return False
    except BusyError:
        return True
