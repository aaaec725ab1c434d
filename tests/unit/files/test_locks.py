"""`files.locked`: exclusive across processes and threads, and it leaves no lock file behind (issue 20)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from lock_holder import held_elsewhere

from enclip_qdrant.files import BusyError, is_locked, locked

COUNTER = """
import sys, time
from pathlib import Path
from enclip_qdrant.files import locked
target, n = Path(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    with locked(target):
        value = int(target.read_text())
        time.sleep(0.0005)  # widen the window a lost update needs
        target.write_text(str(value + 1))
"""


def test_no_lock_file_is_left_behind(tmp_path):
    with locked(tmp_path / "bundle"):
        assert (tmp_path / "bundle.lock").exists()
        with locked(tmp_path / "bundle"):  # re-entrant in the holding thread
            pass
        assert (tmp_path / "bundle.lock").exists()  # still held by the outer block
    assert list(tmp_path.iterdir()) == []


def test_processes_never_interleave_while_lock_files_come_and_go(tmp_path):
    """Removing the file on release is the racy part: a waiter holding the old file must not win beside a
    newcomer on the new one. Lost increments would show it."""
    target = tmp_path / "counter"
    target.write_text("0")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(target), "150"]) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert target.read_text() == "450"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter"]


def test_a_held_lock_is_busy_for_another_process_then_free(tmp_path):
    out = tmp_path / "b"
    with held_elsewhere(out):
        assert is_locked(out)
        t = time.monotonic()
        with pytest.raises(BusyError, match="the thing is busy"), locked(out, timeout=0.3, what="the thing"):
            pass
        assert time.monotonic() - t >= 0.3
    assert not is_locked(out)
    assert list(tmp_path.iterdir()) == []


def test_another_thread_waits_for_the_holder(tmp_path):
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.wait()
        with locked(tmp_path / "s"):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with locked(tmp_path / "s"):
        entered.set()
        time.sleep(0.3)
        assert is_locked(tmp_path / "s") is False  # the holding thread itself: re-entrant, not "another"
        order.append("first")
    t.join(timeout=10)
    assert order == ["first", "second"]
    assert list(tmp_path.iterdir()) == []


def test_a_waiter_whose_file_was_removed_locks_the_new_one(tmp_path, monkeypatch):
    """The window the stress test above rarely hits, made certain: the holder before us removes the file
    between our open() and our flock(). Locking that orphan would let a newcomer in beside us."""
    import fcntl as real_fcntl

    from enclip_qdrant import files

    path = tmp_path / "w.lock"
    calls = []
    real_flock = real_fcntl.flock

    def flock(fd, op):
        if not calls:
            path.unlink()  # the previous holder lets go: file removed, its flock released
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(files.fcntl, "flock", flock)
    with locked(tmp_path / "w"):
        assert len(calls) == 2  # the orphan was locked, noticed, and the new file locked instead
        assert path.exists()
        newcomer = subprocess.run(
            [sys.executable, "-c", "import sys; from enclip_qdrant.files import is_locked\n"
             "print(is_locked(sys.argv[1]))", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
        assert newcomer.stdout.strip() == "True"
    assert list(tmp_path.iterdir()) == []


def test_a_lock_that_could_not_be_taken_keeps_no_other_thread_out(tmp_path):
    """The lock file cannot be opened (here a folder stands at its path): that error reaches the caller, and
    the per-process guard is not left held, so another thread locks it once the path is free."""
    (tmp_path / "x.lock").mkdir()
    with pytest.raises(IsADirectoryError), locked(tmp_path / "x", timeout=0):
        pass
    (tmp_path / "x.lock").rmdir()
    got: list[bool] = []

    def other() -> None:
        with locked(tmp_path / "x", timeout=2):
            got.append(True)

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=10)
    assert got == [True]
