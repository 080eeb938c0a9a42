"""A corpus shaped like TaskTrove's real tasks, built from a folder of real Harbor tasks (`--profile real`).

The synthetic families in synth.py are small (about 2.8 KB compressed); TaskTrove's tasks average about
5 KB (9.3 GB over about 1.85M rows), with longer test scripts and Dockerfiles and data files beside them.
Here each row is one of the given real tasks, its instruction varied (a paragraph of its own) and one
data file added (`environment/data/events-<n>.log`, log lines) whose size is log-normal, sized so the
mean compressed task is MEAN_COMPRESSED bytes. Same arguments and tasks, same bytes: fixed tar and gzip
headers, seeded choices.
"""

from __future__ import annotations

import gzip
import io
import math
import random
import tarfile
from pathlib import Path

from taskray.errors import BadInput

MEAN_COMPRESSED = 5000  # bytes per task, as TaskTrove's average
SIGMA = 1.0  # of the data file's log size: most files small, a few large
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_WORKERS = ("api", "db", "cache", "worker", "scheduler", "auth")


def load_tasks(folder: str | Path) -> list[tuple[str, dict[str, tuple[bytes, int]]]]:
    """(name, {relative path: (bytes, mode)}) of every Harbor task folder (one with task.toml) in `folder`."""
    root = Path(folder)
    if not root.is_dir():
        raise BadInput(f"--tasks-from {folder}: not a folder; expected a folder of Harbor task folders")
    tasks = []
    for task in sorted(p for p in root.iterdir() if (p / "task.toml").is_file()):
        files = {
            str(p.relative_to(task)): (p.read_bytes(), 0o755 if p.stat().st_mode & 0o100 else 0o644)
            for p in sorted(task.rglob("*"))
            if p.is_file()
        }
        tasks.append((task.name, files))
    if not tasks:
        raise BadInput(f"--tasks-from {folder}: no Harbor task folders (with a task.toml) in it")
    return tasks


def _log(rng: random.Random, nbytes: int) -> bytes:
    """Log lines, about `nbytes` of them: they compress like real logs (about 4:1), not like zeros."""
    lines, size, t = [], 0, rng.randrange(10**9)
    while size < nbytes:
        t += rng.randrange(1, 5000)
        who = f"{rng.choice(_LEVELS)} {rng.choice(_WORKERS)}-{rng.randrange(32)}"
        what = f"request {rng.randrange(10**6):06d} took {rng.randrange(1, 2000)} ms"
        line = f"{t // 1000:010d}.{t % 1000:03d} {who} {what} status {rng.choice((200, 200, 404, 500))}\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()


def _pack(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def _vary(files: dict, n: int, rng: random.Random, prose) -> dict:
    """The task with its instruction varied by a paragraph of its own."""
    instruction, mode = files.get("instruction.md", (b"", 0o644))
    extra = f"\n\n## Variant {n}\n\n{prose(rng, rng.randrange(40, 160))}\n".encode()
    return {**files, "instruction.md": (instruction + extra, mode)}


class RealTasks:
    """Makes blobs from the real tasks; the data files' size is set once, from the tasks themselves."""

    def __init__(self, tasks: list[tuple[str, dict]], prose) -> None:
        self.tasks, self.prose = tasks, prose
        rng = random.Random("calibrate")
        base = sum(len(_pack(_vary(files, 0, rng, prose))) for _, files in tasks) / len(tasks)
        sample = _log(rng, 1 << 16)
        ratio = len(sample) / len(gzip.compress(sample, 6))
        mean_raw = max(MEAN_COMPRESSED - base, 200) * ratio
        self.mu = math.log(mean_raw) - SIGMA**2 / 2  # a log-normal's mean is exp(mu + sigma^2 / 2)

    def blob(self, n: int, rng: random.Random) -> tuple[str, bytes]:
        """(path, blob) of row `n`."""
        name, files = self.tasks[rng.randrange(len(self.tasks))]
        files = _vary(files, n, rng, self.prose)
        size = int(rng.lognormvariate(self.mu, SIGMA))
        files[f"environment/data/events-{n}.log"] = (_log(rng, size), 0o644)
        return f"real/{name}/{n}", _pack(files)
