"""Progress display of a benchmark run: rich live bars, or plain log lines with ``--quiet``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


# ============================================================================ progress
class Display:
    """Rich live progress (default: an overall bar and one bar per running task) or plain log lines
    on stderr (``--quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress: Any = None
        self._bar: Any = None
        self._task_bars: dict[str, Any] = {}

    @contextmanager
    def running(self, total: int) -> Iterator[Display]:
        """Show the live display on stderr (unless quiet, or stderr is not a terminal) while the body runs."""
        if self.quiet or not sys.stderr.isatty():
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        with progress:
            self._progress = progress
            self._bar = progress.add_task("simskip bench", total=total)
            try:
                yield self
            finally:
                self._progress = None

    def log(self, message: str) -> None:
        """A log line (above the live display, or on stderr)."""
        stamp = time.strftime("%H:%M:%S")
        if self._progress is not None:
            self._progress.console.print(f"[{stamp}] {message}", markup=False, highlight=False)
        else:
            print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    def start(self, task: str, total: int) -> None:
        """A task begins: add its bar."""
        if self._progress is not None:
            self._task_bars[task] = self._progress.add_task(f"  {task}", total=total)

    def describe(self, task: str, text: str) -> None:
        """What the task is doing now."""
        if self._progress is not None and task in self._task_bars:
            self._progress.update(self._task_bars[task], description=f"  {text}")

    def advance(self, task: str, n: int = 1) -> None:
        """``n`` more cells of ``task`` are finished."""
        if self._progress is not None:
            self._progress.advance(self._bar, n)
            if task in self._task_bars:
                self._progress.advance(self._task_bars[task], n)

    def finish(self, task: str) -> None:
        """A task ended: remove its bar."""
        if self._progress is not None and task in self._task_bars:
            self._progress.remove_task(self._task_bars.pop(task))


class QueueDisplay:
    """The display of a worker process: forwards every call to the parent through a queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def log(self, message: str) -> None:
        self.queue.put(("log", message))

    def start(self, task: str, total: int) -> None:
        self.queue.put(("start", task, total))

    def describe(self, task: str, text: str) -> None:
        self.queue.put(("describe", task, text))

    def advance(self, task: str, n: int = 1) -> None:
        self.queue.put(("advance", task, n))

    def finish(self, task: str) -> None:
        self.queue.put(("finish", task))
