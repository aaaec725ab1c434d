"""kill -9 in the middle of `index`, and a full disk under a state file: nothing lost, a rerun resumes."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enclip_qdrant import api
from enclip_qdrant.files import DiskFullError, atomic_write_json
from enclip_qdrant.store import EdgeStore

# Indexes with a progress object whose "embedding" task SIGKILLs its own process once `after` images have been
# advanced, i.e. right after that many images were upserted: a kill at an exact point, not a race.
KILLER = """
import os, signal, sys
from enclip_qdrant import api
from enclip_qdrant.progress import NullProgress

catalog, bundle, home, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Task:
    seen = 0
    def __init__(self, kill): self.kill = kill
    def advance(self, n=1, **fields):
        if not self.kill:
            return
        Task.seen += n
        if Task.seen >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    def update(self, **fields): pass
    def close(self): pass

class Killer(NullProgress):
    def task(self, description, total=None):
        return Task(description.startswith("embedding"))

api.index(catalog, bundle=bundle, conn=api.Connection(home=home), batch_size=64, progress=Killer())
"""


@pytest.mark.parametrize("after", [64, 320])
def test_kill_9_during_index_keeps_what_was_written_and_a_rerun_resumes(catalog_dir: Path, bundle, catalog,
                                                                        tmp_path: Path, after: int) -> None:
    home = tmp_path / "home"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(catalog_dir), str(bundle.path), str(home), str(after)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    report = api.index(catalog_dir, bundle=bundle.path, conn=api.Connection(home=home), batch_size=64)
    n = len(catalog.products)
    assert report.unchanged >= after  # the batches written before the kill survived it and were not re-embedded
    assert report.added == n - report.unchanged
    with EdgeStore(home) as store:
        physical = store.resolve(report.collection)
        assert store.count(physical) == n
        ids = {pid for pid, _ in store.scroll(physical, ["product_id"])}
    assert len(ids) == n
    hits = api.query("red dress", conn=api.Connection(home=home)).results
    assert hits  # the collection the alias serves is complete and searchable


def test_a_full_disk_is_one_clear_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("enclip_qdrant.files.os.fsync", no_space)
    with pytest.raises(DiskFullError) as e:
        atomic_write_json(target, {"v": 2})
    assert "\n" not in str(e.value) and "no space left" in str(e.value)
    assert json.loads(target.read_text()) == {"v": 1}  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # and no temp file is left behind
