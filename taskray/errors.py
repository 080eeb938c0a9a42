"""The job contract: what library code raises, and what the command line makes of it.

Library functions never exit and never print errors; they raise one of these, and `taskray.cli` alone maps
them to an exit code and one line on stderr:

- `BadInput` (exit 2): an argument, spec, schema, file or destination is not what the job expects. The
  message names the thing and what was expected. Raised before work starts wherever it can be.
- `StorageError` (exit 1): object storage or the filesystem failed (unreachable, denied, 5xx after
  retries). An infrastructure problem: never a task's or a sample's failure.
- `JobFailed` (exit 1): the work itself could not finish (a piece kept failing, a cluster went away).

`BadInput` is a `ValueError`, so callers that catch `ValueError` for bad arguments keep working.
"""

from __future__ import annotations


class TaskrayError(Exception):
    """Base of every error the command line turns into a one-line message."""

    exit_code = 1


class BadInput(TaskrayError, ValueError):
    exit_code = 2


class StorageError(TaskrayError):
    exit_code = 1


class JobFailed(TaskrayError):
    exit_code = 1


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line, cut to `limit` characters: for messages that quote a library's."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
