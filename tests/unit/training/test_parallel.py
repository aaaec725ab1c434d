"""Members trained side by side in worker processes: same bundle, resumable, failures lose nothing."""

from __future__ import annotations

import json
import queue

import pytest

from enclip_qdrant import TrainConfig, train
from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.synthetic import make_catalog
from enclip_qdrant.errors import BundleError
from enclip_qdrant.progress import ProgressRelay, QueueProgress
from enclip_qdrant.training import run as training_mod
from enclip_qdrant.training.config import native_bf16
from enclip_qdrant.training.parallel import JOB_FILE, LOG_FILE, MemberFailed

QUICK = {"preset": "tiny", "epochs": 1, "batch_size": 32, "precision": "fp32"}


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    return load_catalog(make_catalog(tmp_path_factory.mktemp("c") / "c", n=120, seed=5))


class Recorder:
    def __init__(self):
        self.logs, self.tasks = [], {}

    def task(self, description, total=None):
        rec = self.tasks[description] = {"total": total, "done": 0, "closed": False, "fields": {}}

        class T:
            def advance(self, n=1, **fields):
                rec["done"] += n
                rec["fields"] |= fields

            def update(self, **fields):
                rec["fields"] |= fields

            def close(self):
                rec["closed"] = True
        return T()

    def log(self, message):
        self.logs.append(message)


@pytest.mark.slow
def test_parallel_training_gives_a_complete_bundle_with_worker_progress(small_catalog, tmp_path):
    rec = Recorder()
    bundle = train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=3, parallel=2, **QUICK), progress=rec)
    assert [m["name"] for m in bundle.manifest["members"]] == ["m0", "m1", "m2"]
    for m in bundle.manifest["members"]:
        folder = tmp_path / "b" / "members" / m["name"]
        assert json.loads((folder / "report.json").read_text())["precision"] == "fp32"
        assert not (folder / JOB_FILE).exists()  # the job file is removed once the member is done
        assert 0.0 <= m["val"]["r@10"] <= 1.0
    # every worker's bar reached the parent, completed and closed, with its validation score
    bars = {d: t for d, t in rec.tasks.items() if d.endswith("training")}
    assert sorted(bars) == ["m0 (1/3) training", "m1 (2/3) training", "m2 (3/3) training"]
    assert all(t["done"] == t["total"] and t["closed"] and "val" in t["fields"] for t in bars.values())
    assert any("2 at a time" in line for line in rec.logs)
    assert sum(line.startswith("member m") for line in rec.logs) == 3


@pytest.mark.slow
def test_a_failing_member_keeps_the_others_and_a_rerun_resumes(small_catalog, tmp_path):
    out = tmp_path / "b"
    train(small_catalog, out, TrainConfig(onnx=False, members=1, **QUICK))  # m0 done; the run continues with 3 members
    kept = (out / "members" / "m0" / "open_clip_model.safetensors").stat().st_mtime_ns
    # m1 cannot replace its report: the name is taken by a directory
    blocker = out / "members" / "m1" / "report.json"
    blocker.mkdir(parents=True)
    with pytest.raises(MemberFailed, match=r"member m1 failed: .*worker\.log.*run the same command again"):
        train(small_catalog, out, TrainConfig(onnx=False, members=3, parallel=2, **QUICK))
    assert (out / "members" / "m2" / "report.json").is_file()  # trained beside m1, finished, kept
    assert not (out / "members" / "m1" / "report.json").is_file()
    assert "Error" in (out / "members" / "m1" / LOG_FILE).read_text()  # the traceback is kept for the user
    assert not (out / "manifest.json").exists()

    blocker.rmdir()
    rec = Recorder()
    bundle = train(small_catalog, out, TrainConfig(onnx=False, members=3, parallel=2, **QUICK), progress=rec)
    assert len(bundle.manifest["members"]) == 3
    assert {"member m0: already trained, kept", "member m2: already trained, kept"} <= set(rec.logs)
    assert sum("already trained" in line for line in rec.logs) == 2
    assert (out / "members" / "m0" / "open_clip_model.safetensors").stat().st_mtime_ns == kept


def test_auto_stays_in_process_for_small_runs(small_catalog, tmp_path, monkeypatch):
    def no_workers(*a, **k):
        raise AssertionError("a worker process was started for a tiny run")

    import enclip_qdrant.training.parallel as parallel_mod
    monkeypatch.setattr(parallel_mod, "train_members_parallel", no_workers)
    train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=2, **QUICK))
    assert training_mod._auto_workers(8, training_mod.PARALLEL_MIN_PAIRS) == 4
    assert training_mod._auto_workers(2, training_mod.PARALLEL_MIN_PAIRS) == 2
    assert training_mod._auto_workers(8, training_mod.PARALLEL_MIN_PAIRS - 1) == 1


def test_precision_is_resolved_and_checked():
    assert TrainConfig(onnx=False, precision="fp32").resolved().precision == "fp32"
    assert TrainConfig().resolved().precision == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(BundleError, match="--precision must be auto, bf16 or fp32"):
        TrainConfig(onnx=False, precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="--parallel must be at least 1"):
        TrainConfig(onnx=False, parallel=0)


def test_bf16_training_runs_and_is_recorded(small_catalog, tmp_path):
    bundle = train(small_catalog, tmp_path / "b", TrainConfig(onnx=False, members=1, **(QUICK | {"precision": "bf16"})))
    report = json.loads((tmp_path / "b" / "members" / "m0" / "report.json").read_text())
    assert report["precision"] == "bf16"
    assert bundle.manifest["training"]["config"]["precision"] == "bf16"


def test_queue_progress_replays_in_order():
    q: queue.Queue = queue.Queue()
    worker = QueueProgress(q, "m0")
    t = worker.task("m0 training", total=3)
    t.advance(loss="1.0")
    t.advance(2, loss="0.5")
    t.update(val="R@10 0.5")
    t.close()
    worker.log("hello")
    rec = Recorder()
    ProgressRelay(q, rec).drain()
    assert rec.tasks["m0 training"] == {"total": 3, "done": 3, "closed": True,
                                        "fields": {"loss": "0.5", "val": "R@10 0.5"}}
    assert rec.logs == ["hello"]


_FORK_BESIDE_STDIN_WATCHER = """
import multiprocessing, sys, threading, time
from enclip_qdrant.training.parallel import _stdin_lines
seen = []
threading.Thread(target=lambda: seen.extend(_stdin_lines()), daemon=True).start()
time.sleep(0.3)  # the watcher is waiting on stdin
child = multiprocessing.get_context("fork").Process(target=sys.exit, args=(0,))
child.start()
child.join(20)
sys.stdout.write(("hung" if child.is_alive() else "ok " + ",".join(seen)) + "\\n")
sys.stdout.flush()
"""


def test_a_data_loader_worker_forked_in_a_member_process_does_not_hang_on_stdin():
    # A member process reads "threads N" on stdin in a thread; a child forked meanwhile (a DataLoader worker)
    # closes its copy of sys.stdin first thing, which hung for ever when the watcher held sys.stdin's lock.
    import select
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _FORK_BESIDE_STDIN_WATCHER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("threads 2\n")
        proc.stdin.flush()  # stdin stays open until the answer: the watcher is still waiting when the child forks
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        out = proc.stdout.readline() if ready else "no answer"
    finally:
        proc.kill()
        proc.wait()
    assert out == "ok threads 2\n"
