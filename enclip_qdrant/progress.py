"""Progress reporting without printing: the library calls these hooks, the CLI draws rich bars."""

from __future__ import annotations

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
