"""What a run shows its user: progress on stderr, one result line on stdout, Ray's chatter only with -v.

Every job reports through `say` (a line on stderr, prefixed with the job's name) and `Progress` (at most
one line every few seconds, and the last one always), so a normal run's output is ours and a pipe that
reads stdout gets only the result.
"""

from __future__ import annotations

import os
import sys
import time

VERBOSE_ENV = "TASKRAY_VERBOSE"  # set by `taskray -v`; read by the Ray connection too


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def say(job: str, message: str) -> None:
    print(f"[{job}] {message}", file=sys.stderr, flush=True)


class Progress:
    """Rate-limited progress lines: `update(done, text)` prints when `every` seconds have passed since
    the last line, or when `done` reaches `total`."""

    def __init__(self, job: str, total: int, every: float = 2.0):
        self.job, self.total, self.every = job, total, every
        self.started = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def update(self, done: int, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every or done >= self.total:
            say(self.job, text)
            self._last = now
