"""`taskray` command line: one subcommand per job, each defined in its job's `cli.py`.

This is the only place that turns errors into exit codes (see taskray/errors.py): bad input exits 2, a
failure during work exits 1, each with one line on stderr; `-v` shows tracebacks and Ray's own logs.
A job's package is imported only when its command runs, so `taskray scan` never imports the Docker SDK.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from taskray.core.console import VERBOSE_ENV
from taskray.errors import TaskrayError

# command -> (module with COMMANDS, help)
COMMANDS = {
    "scan": ("taskray.scan.cli", "scan a TaskTrove corpus on Ray Data and write a verifier catalog"),
    "export": (
        "taskray.scan.cli",
        "export tasks selected from a catalog as Harbor folders or TaskTrove shards",
    ),
    "synth": ("taskray.scan.cli", "generate a deterministic synthetic TaskTrove corpus"),
    "eval": ("taskray.evaluate.cli", "evaluate HumanEval-style samples in Docker sandboxes on Ray actors"),
    "sandbox": ("taskray.sandbox.cli", "build, check and clean the Docker sandbox"),
    "mix": ("taskray.mix.cli", "build a deterministic TaskMixture from a YAML spec and export it"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="taskray", description=__doc__.splitlines()[0])
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
        print(f"taskray {args.command}: {_one_line(e)}", file=sys.stderr)
        return e.exit_code if isinstance(e, TaskrayError) else _unexpected_code(e)


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, TaskrayError | FileNotFoundError | ValueError):
        return text
    return f"{type(e).__name__}: {text} (run with -v for the traceback)"


def _unexpected_code(e: Exception) -> int:
    # A missing file or a malformed value that escaped a typed check is still the user's input.
    return 2 if isinstance(e, FileNotFoundError | ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
