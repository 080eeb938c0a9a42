"""What every `jobs/*.py` entrypoint does: use the taskray of the uploaded working dir, run one command."""

import sys
from pathlib import Path


def run(command: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the taskray package
    from taskray.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
