"""What every subcommand gets: its arguments, the consoles and progress bars."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")

#: Seconds between two progress lines when standard error is not a terminal.
PROGRESS_SECONDS = 10.0
#: The environment variable that sets another interval (seconds, > 0), for tests.
PROGRESS_SECONDS_ENV = "PAGEBUDDY_PROGRESS_SECONDS"


def progress_seconds() -> float:
    """The interval between progress lines: :data:`PROGRESS_SECONDS`, or what
    :data:`PROGRESS_SECONDS_ENV` says if it is a finite number > 0."""
    try:
        v = float(os.environ.get(PROGRESS_SECONDS_ENV, ""))
    except ValueError:
        return PROGRESS_SECONDS
    return v if v > 0 and math.isfinite(v) else PROGRESS_SECONDS


class _Task:
    def __init__(self, description: str, total: float | None, fields: dict[str, Any]) -> None:
        self.description = description
        self.total = total
        self.completed = 0.0
        self.fields = fields


class LineProgress:
    """Progress for logs and pipes: what :class:`rich.progress.Progress` offers the
    subcommands (``add_task``, ``update``), printed as one line on ``file`` every
    ``interval`` seconds while it runs (by a thread of its own, so a line comes even while
    a task makes no update), and a last line at the end once one was printed. A run
    shorter than ``interval`` prints nothing.
    """

    def __init__(self, file: IO[str], interval: float) -> None:
        self.file = file
        self.interval = interval
        self.tasks: list[_Task] = []
        self.lines = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pagebuddy-progress", daemon=True)

    def __enter__(self) -> LineProgress:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.lines:
            self._print("done")

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        """A new task (the latest is the one shown); its id."""
        self.tasks.append(_Task(description, total, fields))
        return TaskID(len(self.tasks) - 1)

    def update(
        self,
        task_id: TaskID,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        """As :meth:`rich.progress.Progress.update` (``total=None`` leaves it unchanged)."""
        task = self.tasks[task_id]
        if completed is not None:
            task.completed = completed
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        task.fields.update(fields)

    def line(self, end: str = "") -> str:
        """The progress line of the latest task."""
        elapsed = time.monotonic() - self._t0
        if not self.tasks:
            return f"{end or 'working'} ({elapsed:,.0f} s)"
        task = self.tasks[-1]
        parts = []
        if task.total:
            parts.append(f"{min(100.0, 100 * task.completed / task.total):.0f}%")
        parts += [str(v) for v in task.fields.values() if v != ""]
        parts.append(f"{elapsed:,.0f} s" + (f", {end}" if end else ""))
        return f"{task.description}: {', '.join(parts)}"

    def _print(self, end: str = "") -> None:
        try:
            self.file.write(self.line(end) + "\n")
            self.file.flush()
        except (OSError, ValueError):  # standard error closed, or a broken pipe
            return
        self.lines += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()


class Context:
    """Consoles and options shared by the subcommands.

    Progress goes to standard error (never with ``--no-progress``): a live bar on a
    terminal; otherwise (a log, a pipe) a line every :func:`progress_seconds`, 10 by
    default. Reports go to standard output.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = getattr(args, "json", False)
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        wanted = not getattr(args, "no_progress", False)
        self.show_progress = self.err.is_terminal and wanted
        self.line_progress = wanted and not self.err.is_terminal

    def progress(self, *extra: Any) -> Progress | LineProgress:
        """Progress on standard error: a transient bar with ``extra`` columns on a terminal,
        :class:`LineProgress` elsewhere."""
        if self.line_progress:
            return LineProgress(sys.stderr, progress_seconds())
        return Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            *extra,
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=not self.show_progress,
        )

    def counted(self, label: str, total: int, run: Callable[[Callable[[int], None]], T]) -> T:
        """``run(tick)`` under a bar of ``total`` steps; ``tick(n)`` says ``n`` are done."""
        with self.progress(MofNCompleteColumn()) as prog:
            task = prog.add_task(label, total=total)

            def tick(n: int) -> None:
                prog.update(task, completed=min(n, total))

            return run(tick)

    def emit_json(self, obj: dict[str, Any]) -> None:
        """Print ``obj`` as one JSON document."""
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def error(self, message: str) -> None:
        """One line on standard error."""
        self.err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
