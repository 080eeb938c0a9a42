"""`taskray` command line: one subcommand per job, each defined in its job's `cli.py`.

This is the only place that turns errors into exit codes (see taskray/errors.py): bad input exits 2, a
failure during work exits 1, each with one line on stderr; `-v` shows tracebacks and Ray's own logs.
A job's package is imported only when its command runs, so `taskray scan` never imports the Docker SDK.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from taskray.core.console import VERBOSE_ENV
from taskray.errors import TaskrayError, one_line

# command -> (module with COMMANDS, help)
COMMANDS = {
    "scan": ("taskray.scan.cli", "scan a TaskTrove corpus on Ray and write a verifier catalog"),
    "export": (
        "taskray.scan.cli",
        "export tasks selected from a catalog as Harbor folders or TaskTrove shards",
    ),
    "synth": ("taskray.scan.cli", "generate a deterministic synthetic TaskTrove corpus"),
    "verify": (
        "taskray.verify.cli",
        "run each task's own verifier in Docker on Ray: oracle must pass, null must fail",
    ),
    "eval": ("taskray.evaluate.cli", "evaluate HumanEval-style samples in Docker sandboxes on Ray actors"),
    "sandbox": ("taskray.sandbox.cli", "build, check and clean the Docker sandbox"),
    "mix": ("taskray.mix.cli", "build a deterministic TaskMixture from a YAML spec and export it"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A bad argument is bad input like any other: exit 2, one line."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive(text: str) -> int:
    """argparse type for counts: an integer >= 1 (a 0 would leave Ray waiting for CPUs forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def regex(text: str) -> str:
    """argparse type for --source-filter: a regular expression that compiles."""
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regex: {e}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog="taskray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module).COMMANDS[name][0](p)
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # Ray's logs too (taskray.core.raycluster)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).COMMANDS[args.command][1](args) or 0
    except KeyboardInterrupt:
        print(f"taskray {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose:
            traceback.print_exc()
        code = e.exit_code if isinstance(e, TaskrayError) else _unexpected_code(e)
        log = _save_traceback(args.command, e) if code == 1 else None
        where = f" (full log: {log})" if log else ""
        print(f"taskray {args.command}: {_one_line(e)}{where}", file=sys.stderr)
        return code


def _one_line(e: Exception) -> str:
    text = one_line(e, 2000) or type(e).__name__
    if isinstance(e, TaskrayError | FileNotFoundError | ValueError):
        return text
    return f"{type(e).__name__}: {text}"


def _save_traceback(command: str, e: Exception) -> Path | None:
    """A failure during work keeps its whole story in a file; the terminal gets one line."""
    folder = Path(os.environ.get("TASKRAY_LOG_DIR") or Path.home() / ".cache" / "taskray" / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"taskray {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(e)))
        return path
    except OSError:
        return None


def _unexpected_code(e: Exception) -> int:
    # A missing file or a malformed value that escaped a typed check is still the user's input.
    return 2 if isinstance(e, FileNotFoundError | ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
