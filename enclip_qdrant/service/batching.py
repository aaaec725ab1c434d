"""Micro-batching for query encoding.

Encoding is CPU-bound and a forward pass over 16 queries costs little more than over one, so queries
that arrive while a forward pass runs wait in a bounded queue and are encoded together in the next round:
one forward pass per member for all waiting texts, one for all waiting images. A full queue is refused at
once (`Overloaded`, which the service answers with 503 + Retry-After) instead of letting latency grow
without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

Kind = Literal["text", "image"]
Row = tuple[dict[str, np.ndarray], np.ndarray]  # one query's per-member vectors (1, d) and joint (1, D)
_STOP = object()


class Overloaded(Exception):
    """The encode queue is full: the client should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int = 1, what: str = "too many queries waiting to be encoded") -> None:
        super().__init__(f"server busy: {what}; retry in {retry_after} s")
        self.retry_after = retry_after


class EncodeTimeout(Exception):
    """A query waited longer than the request timeout for its turn to be encoded."""


@dataclass
class BatchStats:
    batches: int = 0  # forward-pass rounds (each one embed_texts and/or one embed_images call)
    queries: int = 0
    largest: int = 0


class MicroBatcher:
    """One worker thread runs the forward passes; callers from any thread `encode()` and block on a future.

    `max_batch` queries at most per round. A query that finds the worker idle and nobody waiting is
    encoded at once; when others are already waiting, the round waits at most `max_wait_ms` more for
    company. At most `max_queue` queries of each kind wait (the rest get `Overloaded`): a burst of image uploads,
    each a costly forward pass, never fills the places of the cheap text queries behind it."""

    def __init__(self, embed_texts: Callable[[list[str]], Row], embed_images: Callable[[list[Image.Image]], Row], *,
                 max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self._embed = {"text": embed_texts, "image": embed_images}
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.max_queue = max_queue
        self._queue: queue.Queue[Any] = queue.Queue()  # bounded per kind by `_waiting`, so 2 x max_queue at most
        self._waiting = {"text": 0, "image": 0}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running = 0  # forward passes in progress (the worker's rounds and callers' own)
        self.stats = BatchStats()

    def _claim_idle(self, n: int) -> bool:
        """True (and counted as running) when no forward pass runs and no query waits: encode inline."""
        with self._lock:
            if self._running or not self._queue.empty() or self._thread is None:
                return False
            self._running += 1
            self._count(n)
            return True

    def _count(self, n: int) -> None:
        self.stats.batches += 1
        self.stats.queries += n
        self.stats.largest = max(self.stats.largest, n)

    def start(self) -> MicroBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="enclip-encode", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)  # blocking put: the worker drains the queue, so this always lands
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, kind: Kind, item: str | Image.Image) -> Future[Row]:
        fut: Future[Row] = Future()
        with self._lock:
            if self._waiting[kind] >= self.max_queue:
                raise Overloaded()
            self._waiting[kind] += 1
        self._queue.put_nowait((kind, item, fut))
        return fut

    def _take(self, entry: Any) -> Any:
        """An entry leaves the queue: its kind has one more free place."""
        if entry is not _STOP:
            with self._lock:
                self._waiting[entry[0]] -= 1
        return entry

    def encode(self, kind: Kind, items: Sequence[str | Image.Image], timeout: float | None = None) -> Row:
        """Encode `items` (each its own queue entry, so they batch with other callers'); stacked like
        `Bundle.embed_texts` returns them.

        On an idle batcher (no round running, nobody waiting) the caller's own thread runs the forward pass:
        handing a lone query to the worker thread and back cost ~1 ms of thread wake-ups against a ~5 ms
        encode (bench/encode_compare.py). Whoever arrives meanwhile queues for the worker as usual."""
        if self._claim_idle(len(items)):
            try:
                return self._embed[kind](list(items))  # type: ignore[arg-type]
            finally:
                with self._lock:
                    self._running -= 1
        futures = [self.submit(kind, it) for it in items]
        deadline = None if timeout is None else time.monotonic() + timeout
        rows = []
        for f in futures:
            try:
                rows.append(f.result(None if deadline is None else max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                for g in futures:
                    g.cancel()  # still queued: the worker skips it
                raise EncodeTimeout(f"request timed out: query not encoded within {timeout:g} s") from None
        per = {name: np.concatenate([r[0][name] for r in rows]) for name in rows[0][0]}
        return per, np.concatenate([r[1] for r in rows])

    def _run(self) -> None:
        while True:
            first = self._take(self._queue.get())
            if first is _STOP:
                return
            batch, stop = [first], False
            stop = self._drain(batch, None)  # whatever is already waiting joins at once
            if not stop and 1 < len(batch) < self.max_batch:
                # others were waiting, so more are likely on their way: give them max_wait to join.
                # A lone query on an idle service is encoded at once, so it costs what the library costs.
                stop = self._drain(batch, time.monotonic() + self.max_wait)
            self._round(batch)
            if stop:
                return

    def _drain(self, batch: list[Any], deadline: float | None) -> bool:
        """Move queued entries into `batch` (up to max_batch): without waiting, or until `deadline`.
        True when the stop sentinel was met."""
        while len(batch) < self.max_batch:
            try:
                if deadline is None:
                    nxt = self._take(self._queue.get_nowait())
                else:
                    nxt = self._take(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            batch.append(nxt)
        return False

    def _round(self, batch: list[tuple[Kind, Any, Future[Row]]]) -> None:
        with self._lock:
            self._running += 1
        try:
            self._round_now(batch)
        finally:
            with self._lock:
                self._running -= 1

    def _round_now(self, batch: list[tuple[Kind, Any, Future[Row]]]) -> None:
        live = [b for b in batch if b[2].set_running_or_notify_cancel()]
        if not live:
            return
        with self._lock:
            self._count(len(live))
        for kind in ("text", "image"):
            group = [b for b in live if b[0] == kind]
            if not group:
                continue
            try:
                per, joint = self._embed[kind]([b[1] for b in group])
            except BaseException as e:  # a bad batch fails its own callers, never the worker
                for b in group:
                    b[2].set_exception(e)
                continue
            for i, b in enumerate(group):
                b[2].set_result(({name: v[i:i + 1] for name, v in per.items()}, joint[i:i + 1]))


class BatchingEncoder:
    """A `QueryEncoder` (see `search.encode_query`) whose forward passes go through a `MicroBatcher`."""

    def __init__(self, batcher: MicroBatcher, timeout: float | None = None) -> None:
        self.batcher, self.timeout = batcher, timeout

    def embed_texts(self, texts: list[str]) -> Row:
        return self.batcher.encode("text", texts, self.timeout)

    def embed_images(self, images: list[Image.Image]) -> Row:
        return self.batcher.encode("image", images, self.timeout)
