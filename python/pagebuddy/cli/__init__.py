"""The ``pagebuddy`` command (also ``python -m pagebuddy``).

Subcommands: ``demo`` (the default), ``fuzz``, ``replay``, ``bench``, ``ftrace`` and
``conform``; see
``pagebuddy --help`` and ``docs/cli.md``.

Each subcommand lives in a module of its own (``demo.py``, ``replay.py``, ``fuzz.py``,
``bench.py``, ``ftrace.py``) whose ``report(ctx)`` runs it and returns one report, a plain
dict with its ``exit_code``; :func:`pagebuddy.cli._show.show` prints it as JSON
(``--json``) or as rich text and tables. The arguments are in ``_args.py``; this module
parses them, runs the subcommand and reports every failure the same way: one line on
standard error, or one JSON object with ``--json``, exit code 2 for bad input, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._lockstep import GeometryRefused
from . import bench, conform, demo, ftrace, fuzz, replay
from ._args import (
    EXIT_DIVERGENCE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    Usage,
    build_parser,
)
from ._context import Context
from ._show import show

__all__ = [
    "EXIT_DIVERGENCE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


#: Each subcommand: its arguments in, its report out.
_COMMANDS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "demo": demo.report,
    "fuzz": fuzz.report,
    "replay": replay.report,
    "bench": bench.report,
    "ftrace": ftrace.report,
    "conform": conform.report,
}


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for JSON (``--json`` or an abbreviation argparse would accept),
    decided before parsing so that a usage error can be reported as JSON too."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) > 2 and "--json".startswith(arg):
            return True
    return False


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if a in _COMMANDS), None)


def _report_error(
    json_out: bool, command: str | None, message: str, code: int, **extra: Any
) -> int:
    """Report a failure as one line on stderr, or as one JSON object on stdout; return ``code``."""
    if json_out:
        obj = {"command": command, "ok": False, "error": message, **extra, "exit_code": code}
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        Context(argparse.Namespace()).error(message)
    return code


def _parse(parser: argparse.ArgumentParser, argv: list[str], json_out: bool) -> Any:
    """``parser.parse_args(argv)``; ``--help`` prints the help (inside JSON with ``--json``) and
    returns the exit code instead of a namespace."""
    if not json_out:
        try:
            return parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            return parser.parse_args(argv)
    except SystemExit as e:
        code = int(e.code or 0)
        obj = {"command": _command_of(argv), "ok": code == 0, "help": text.getvalue()}
        sys.stdout.write(json.dumps({**obj, "exit_code": code}, indent=2) + "\n")
        return code


def _run(ctx: Context) -> int:
    """Run the subcommand, show its report, return its exit code."""
    report = _COMMANDS[ctx.args.command](ctx)
    if not report.pop("shown", False):
        show(ctx, report)
    return int(report["exit_code"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pagebuddy`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Every outcome is reported: bad input exits 2 with one line on standard error (with
    ``--json``, one JSON object on standard output), never a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "demo")  # no subcommand: the demo, with the options given
    json_out = _wants_json(argv)
    command = _command_of(argv)
    try:
        args = _parse(build_parser(), argv, json_out)
    except Usage as e:
        return _report_error(json_out, command, str(e), EXIT_USAGE, **e.extra)
    if isinstance(args, int):
        return args
    if args.version:
        from .. import __version__

        if json_out:
            sys.stdout.write(json.dumps({"ok": True, "version": __version__}) + "\n")
        else:
            sys.stdout.write(f"pagebuddy {__version__}\n")
        return EXIT_OK
    if args.command is None:
        return _report_error(
            json_out, None, "a command is needed (see pagebuddy --help)", EXIT_USAGE
        )
    ctx = Context(args)
    try:
        return _run(ctx)
    except Usage as e:
        return _report_error(ctx.json, args.command, str(e), EXIT_USAGE, **e.extra)
    except GeometryRefused as e:
        return _report_error(ctx.json, args.command, str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        return _report_error(ctx.json, args.command, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # a file named on the command line cannot be read or written
        message = f"{e.filename}: {e.strerror}" if e.filename is not None else str(e)
        return _report_error(ctx.json, args.command, message, EXIT_USAGE)
    except Exception as e:
        from .._plot import PlotUnavailable

        if isinstance(e, PlotUnavailable):
            return _report_error(ctx.json, args.command, str(e), EXIT_USAGE)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
