"""Train ensemble members side by side, one worker process per member, splitting the CPU cores.

Why processes: members are independent, and a small CLIP uses one core far better than two cores use
one small CLIP (many small ops parallelise poorly), so two members on one core each beat two members
one after another on both cores (see BENCHMARKS.md). Threads would share one interpreter and one
OpenMP pool, and vectorising the members into one model (torch.func) measured slower on CPU.

Why `python -m` subprocesses and not multiprocessing: a spawned multiprocessing child re-runs the
caller's script unless it is guarded by `if __name__ == "__main__"`, and fork is unsafe once torch
has started its thread pool. A worker here is a fresh interpreter that imports only this package.

Protocol: the parent writes a job file; the worker maps the run's image cache (image_cache), trains, saves the
member with its report.json (the completion marker, so a re-run resumes), and exits 0. It prints
progress events on stdout as JSON lines; the parent writes "threads N" lines on its stdin whenever the
number of running members changes, so the last member gets every core. A worker whose stdin closes
(parent gone) exits. Its stderr goes to `worker.log` in the member folder, quoted on failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from enclip_qdrant.errors import EnclipError
from enclip_qdrant.files import atomic_write_json
from enclip_qdrant.progress import Progress, ProgressRelay, QueueProgress
from enclip_qdrant.training.config import ResolvedConfig
from enclip_qdrant.training.image_cache import ImageCache
from enclip_qdrant.training.jobs import MemberJob, Pairs, log_member, read_report, train_and_save

EVENT_PREFIX = "@enclip "
JOB_FILE = "job.json"
LOG_FILE = "worker.log"


class MemberFailed(EnclipError):
    pass


class _Worker:
    def __init__(self, job: MemberJob, events: queue.Queue, threads: int):
        self.job, self.folder = job, job.folder
        self.log = open(self.folder / LOG_FILE, "w")  # noqa: SIM115 - closed in finish()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        worker = [sys.executable, "-m", "enclip_qdrant.training.parallel", str(self.folder / JOB_FILE)]
        self.proc = subprocess.Popen(worker,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)
        self.threads = threads
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.reader.start()

    def _read(self, events: queue.Queue) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(EVENT_PREFIX):
                events.put(tuple(json.loads(line[len(EVENT_PREFIX):])))

    def set_threads(self, n: int) -> None:
        if n != self.threads and self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(f"threads {n}\n")
                self.proc.stdin.flush()
                self.threads = n
            except (BrokenPipeError, OSError):
                pass

    def finish(self) -> str | None:
        """None when the member is complete, else why not."""
        self.reader.join(timeout=5)
        self.log.close()
        if self.proc.returncode == 0:
            return None
        lines = [ln for ln in (self.folder / LOG_FILE).read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {self.proc.returncode}"
        return f"{last} (full log: {self.folder / LOG_FILE})"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def train_members_parallel(jobs: Sequence[MemberJob], pairs: Pairs, val_idx: np.ndarray, cfg: ResolvedConfig,
                           workers: int, budget: int, progress: Progress) -> None:
    """Train `jobs` in up to `workers` processes sharing `budget` threads.

    A member that fails does not take the others down: the running ones finish and are kept (a re-run
    resumes), no new one starts, and then the first failure is raised. Ctrl-C stops every worker.
    """
    common = {"image_cache": str(pairs.images.data), "image_offsets": pairs.images.offsets.tolist(),
              "image_shapes": pairs.images.shapes.tolist(), "texts": list(pairs.texts),
              "field_texts": [list(ts) for ts in pairs.field_texts],
              "val_idx": val_idx.tolist(), "cfg": cfg.to_dict()}
    events: queue.Queue = queue.Queue()
    relay = ProgressRelay(events, progress)
    waiting, running = list(jobs), []  # type: ignore[var-annotated]
    failures: list[str] = []
    try:
        while waiting or running:
            while waiting and len(running) < workers and not failures:
                job = waiting.pop(0)
                spec = common | {"name": job.name, "label": job.label, "seed": job.seed,
                                 "folder": str(job.folder), "idx": job.idx.tolist(), "tower": job.tower}
                atomic_write_json(job.folder / JOB_FILE, spec, indent=None)
                running.append(_Worker(job, events, max(1, budget // workers)))
            if not running:
                break
            share = max(1, budget // len(running))
            for w in running:
                w.set_threads(share)
            time.sleep(0.2)
            relay.drain()
            for w in [w for w in running if w.proc.poll() is not None]:
                running.remove(w)
                relay.drain()
                why = w.finish()
                (w.folder / JOB_FILE).unlink(missing_ok=True)
                report = read_report(w.folder) if why is None else None
                if why is None and report is None:
                    why = f"its report did not read back (full log: {w.folder / LOG_FILE})"
                if report is not None:
                    log_member(progress, w.job.name, report)
                else:
                    failures.append(f"member {w.job.name} failed: {why}")
                    progress.log(failures[-1])
        relay.drain()
    except BaseException:
        for w in running:
            w.kill()
        raise
    if failures:
        raise MemberFailed(failures[0] + ("; finished members are kept: run the same command again to resume"
                                          if len(jobs) > 1 else ""))


class _StdoutSink:
    """QueueProgress's queue in a worker: events become marked JSON lines on stdout."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def put(self, event: tuple) -> None:
        with self.lock:
            sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
            sys.stdout.flush()


def _stdin_lines() -> Iterator[str]:
    """stdin's lines, read from fd 0 with os.read, not through sys.stdin: a buffered reader holds its lock while
    it waits, and a process forked meanwhile (a data-loader worker) would hang for ever closing its copy of
    stdin (multiprocessing does that first thing in every child)."""
    buf = b""
    while chunk := os.read(0, 4096):
        *lines, buf = (buf + chunk).split(b"\n")
        yield from (line.decode(errors="replace") for line in lines)


def _watch_stdin(state: dict[str, int]) -> None:
    for line in _stdin_lines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "threads" and parts[1].isdigit():
            state["threads"] = max(1, int(parts[1]))
    os._exit(3)  # the parent is gone: stop burning CPU for nobody


def _worker_main(job_file: str) -> None:
    import torch

    spec = json.loads(Path(job_file).read_text())
    state = {"threads": int(os.environ.get("OMP_NUM_THREADS", "1"))}
    torch.set_num_threads(state["threads"])
    threading.Thread(target=_watch_stdin, args=(state,), daemon=True).start()
    images = ImageCache(Path(spec["image_cache"]), np.asarray(spec["image_offsets"], dtype=np.int64),
                        np.asarray(spec["image_shapes"], dtype=np.int32).reshape(-1, 2))
    pairs = Pairs([str(i) for i in range(len(images))], images, spec["texts"],
                  [tuple(ts) for ts in spec.get("field_texts", [])])
    job = MemberJob(spec["name"], spec["label"], spec["seed"], Path(spec["folder"]), np.asarray(spec["idx"]),
                    spec.get("tower", ""))
    progress = QueueProgress(_StdoutSink(), spec["name"])
    cfg = ResolvedConfig.from_dict(spec["cfg"])
    if cfg.loader_workers is None:  # the members already share the cores: each augments in its own main thread
        cfg = dataclasses.replace(cfg, loader_workers=0)
    train_and_save(job, pairs, np.asarray(spec["val_idx"]), cfg, progress,
                   threads=lambda: state["threads"])


if __name__ == "__main__":
    _worker_main(sys.argv[1])
