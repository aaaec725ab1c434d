"""rich progress bars behind the library's Progress hooks."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _RichTask:
    def __init__(self, owner: RichProgress, task_id: Any):
        self.owner, self.id, self.fields = owner, task_id, {}

    def _info(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.fields.items())

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.fields |= fields
        self.owner.bar.update(self.id, advance=n, info=self._info())

    def update(self, **fields: Any) -> None:
        self.fields |= fields
        self.owner.bar.update(self.id, info=self._info())

    def close(self) -> None:
        self.owner.bar.update(self.id, visible=True)
        self.owner.bar.stop_task(self.id)


class RichProgress:
    """Bars with ETA on stderr, so `--json` output on stdout stays machine-readable."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=self.console, disable=not enabled)

    def task(self, description: str, total: int | None = None) -> _RichTask:
        return _RichTask(self, self.bar.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.console.print(f"[cyan]•[/] {message}")

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
