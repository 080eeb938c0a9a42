"""`taskray` command line: one subcommand per job, each defined next to the code it runs.

A command module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported only
when their command runs, so `taskray scan` never imports the Docker SDK and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "scan": ("taskray.scan", "scan a TaskTrove corpus on Ray Data and write a verifier catalog"),
    "export": (
        "taskray.export",
        "export tasks selected from a catalog as Harbor folders or TaskTrove shards",
    ),
    "synth": ("taskray.synth", "generate a deterministic synthetic TaskTrove corpus"),
    "eval": ("taskray.evaluate", "evaluate HumanEval-style samples in Docker sandboxes on Ray actors"),
    "sandbox": ("taskray.sandbox.cli", "build, check and clean the Docker sandbox"),
    "mix": ("taskray.mix", "build a deterministic TaskMixture from a YAML spec and export it"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="taskray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except (FileNotFoundError, ValueError) as e:
        # Bad input (a missing path, a malformed file or option): one line naming it, not a traceback.
        # TASKRAY_DEBUG=1 shows the traceback.
        if os.environ.get("TASKRAY_DEBUG"):
            raise
        print(f"taskray {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
