"""Index and render a 10^7-row mixture: taskray's closed-form index vs a nanochat-style list of pairs.

    python benchmarks/mix.py [--rows 10000000] [--render 1000000] [--data ../shared/data]

Each method runs in its own child process (so peak RSS is its own) over the same tasks and counts:
- index: build the index and resolve all N positions to (task, row);
- render: turn the first R positions into exported rows (`taskray.mix.make_row`), the per-row work of a
  `taskray mix` worker. Rendering costs the same per row for both; the index is where they differ.
Run by hand, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 100_000  # positions resolved per vectorised lookup: bounds the temporaries to a few MB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(rows: int, data: Path):
    from taskray.mix.spec import Entry
    from taskray.tasks.gsm8k import GSM8K
    from taskray.tasks.spellingbee import SimpleSpelling, SpellingBee

    # 40% SpellingBee, 30% SimpleSpelling, 30% GSM8K train oversampled ~400 times
    bee, spell = SpellingBee(size=rows * 4 // 10), SimpleSpelling(size=rows * 3 // 10)
    gsm = GSM8K("main", "train", path=data / "gsm8k")
    tasks = [bee, spell, gsm]
    counts = [len(bee), len(spell), rows - len(bee) - len(spell)]
    entries = [Entry(t.name, t.name, {}) for t in tasks]
    return tasks, counts, entries


def child(method: str, rows: int, render: int, data: Path) -> dict:
    from taskray.mix.split import make_row
    from taskray.tasks.mixture import Component, MixtureIndex

    tasks, counts, entries = build(rows, data)
    base = rss_mb()
    t0 = time.perf_counter()
    checksum = 0
    if method == "closed-form":
        index = MixtureIndex([Component(len(t), c) for t, c in zip(tasks, counts)], seed=42)
        for start in range(0, rows, CHUNK):
            comp, local, _ = index.lookup(np.arange(start, min(rows, start + CHUNK)))
            checksum += int(comp.sum()) + int(local.sum())

        def positions(n: int):  # as a worker renders a range: vectorised lookups, chunk by chunk
            for start in range(0, n, CHUNK):
                comp, local, _ = index.lookup(np.arange(start, min(n, start + CHUNK)))
                yield from zip(comp.tolist(), local.tolist())
    else:
        # nanochat's TaskMixture: every (task_idx, local_idx) pair in a list, shuffled in place
        index_map = []
        for task_idx, (task, count) in enumerate(zip(tasks, counts)):
            n = len(task)
            for j in range(count):
                index_map.append((task_idx, j % n))
        random.Random(42).shuffle(index_map)
        for task_idx, local_idx in index_map:
            checksum += task_idx + local_idx

        def positions(n: int):
            return iter(index_map[:n])
    index_s = time.perf_counter() - t0
    index_rss = rss_mb()

    t1 = time.perf_counter()
    out_bytes = 0
    for c, loc in positions(render):
        row = make_row(tasks[c], entries[c], loc, 0)
        out_bytes += len(row["info"]) + len(row["answer"])
    render_s = time.perf_counter() - t1
    return {"method": method, "rows": rows, "index_s": round(index_s, 2), "render_rows": render,
            "render_s": round(render_s, 2), "render_rows_per_s": round(render / max(render_s, 1e-9)),
            "rss_after_tasks_mb": round(base), "rss_after_index_mb": round(index_rss),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "checksum": checksum}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--render", type=int, default=1_000_000, help="rows to render per method")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--method", choices=["closed-form", "list-of-pairs"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        print(json.dumps(child(args.method, args.rows, args.render, args.data)))
        return 0
    results = []
    for method in ("closed-form", "list-of-pairs"):
        cmd = [sys.executable, __file__, "--method", method, "--rows", str(args.rows),
               "--render", str(args.render), "--data", str(args.data)]
        print(f"running {method} ...", file=sys.stderr, flush=True)
        results.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(json.dumps(results[-1]), flush=True)
    ours, theirs = results
    grown = {r["method"]: r["rss_after_index_mb"] - r["rss_after_tasks_mb"] for r in results}
    print(f"\n{'':14} {'index s':>8} {'index MB':>9} {'peak MB':>8} {'render rows/s':>14}")
    for r in results:
        print(f"{r['method']:14} {r['index_s']:8.2f} {grown[r['method']]:9d} {r['peak_rss_mb']:8d} "
              f"{r['render_rows_per_s']:14,d}")
    print(f"\nlist-of-pairs / closed-form: index time {theirs['index_s'] / max(ours['index_s'], 1e-9):.1f}x, "
          f"index memory {grown['list-of-pairs'] / max(1, grown['closed-form']):.0f}x, "
          f"peak RSS {theirs['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
