"""What every subcommand gets: its arguments, the consoles and progress bars."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")


class Context:
    """Consoles and options shared by the subcommands.

    Progress bars go to standard error, and only on a terminal (never with
    ``--no-progress``); reports go to standard output.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = getattr(args, "json", False)
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.show_progress = self.err.is_terminal and not getattr(args, "no_progress", False)

    def progress(self, *extra: Any) -> Progress:
        """A transient progress bar on standard error, with ``extra`` columns."""
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
