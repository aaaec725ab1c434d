"""Progress reporting without printing: the library calls these hooks, the CLI draws rich bars."""

from __future__ import annotations

import queue as queue_module
from typing import Any, Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **fields: Any) -> None: ...
    def update(self, **fields: Any) -> None: ...
    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> Task: ...
    def log(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def update(self, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Default for library callers who want silence."""

    def task(self, description: str, total: int | None = None) -> Task:
        return _NullTask()

    def log(self, message: str) -> None:
        pass


class QueueProgress:
    """Progress hooks for a worker process: every call becomes an event on a queue the parent relays.

    Events are tuples so they pickle cheaply: ("task", key, description, total), ("advance", key, n,
    fields), ("update", key, fields), ("close", key), ("log", message).
    """

    def __init__(self, queue: Any, prefix: str):
        self.queue, self.prefix, self._n = queue, prefix, 0

    def task(self, description: str, total: int | None = None) -> Task:
        self._n += 1
        key = f"{self.prefix}/{self._n}"
        self.queue.put(("task", key, description, total))
        return _QueueTask(self.queue, key)

    def log(self, message: str) -> None:
        self.queue.put(("log", message))


class _QueueTask:
    def __init__(self, queue: Any, key: str):
        self.queue, self.key = queue, key

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.queue.put(("advance", self.key, n, fields))

    def update(self, **fields: Any) -> None:
        self.queue.put(("update", self.key, fields))

    def close(self) -> None:
        self.queue.put(("close", self.key))


class ProgressRelay:
    """The parent's side of QueueProgress: replays worker events on the real Progress."""

    def __init__(self, queue: Any, progress: Progress):
        self.queue, self.progress = queue, progress
        self.tasks: dict[str, Task] = {}

    def drain(self) -> None:
        while True:
            try:
                event = self.queue.get_nowait()
            except queue_module.Empty:
                return
            kind = event[0]
            if kind == "task":
                self.tasks[event[1]] = self.progress.task(event[2], total=event[3])
            elif kind == "log":
                self.progress.log(event[1])
            elif event[1] in self.tasks:
                task = self.tasks[event[1]]
                if kind == "advance":
                    task.advance(event[2], **event[3])
                elif kind == "update":
                    task.update(**event[2])
                elif kind == "close":
                    task.close()
