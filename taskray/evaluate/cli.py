"""`taskray eval`: arguments in, metrics out. Errors are raised, not printed."""

from __future__ import annotations

import argparse
import json
import math
import time

from taskray.cli import positive
from taskray.core.console import say
from taskray.errors import BadInput, JobFailed


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--problems",
        default="humaneval",
        help="`humaneval` (the Hub's openai/openai_humaneval), `humaneval:PATH` or a path",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", help="JSONL(.gz) of {task_id, completion}; several per task for pass@k")
    what.add_argument("--self-check", action="store_true", help="run each problem's canonical solution")
    parser.add_argument("--repeat", type=int, default=1, help="with --self-check: samples per problem")
    parser.add_argument("--out", default="taskray-out/eval", help="output folder or s3:// prefix")
    parser.add_argument(
        "--workers", type=int, default=None, help="sandbox actors (default: one per CPU in the cluster)"
    )
    parser.add_argument("--containers", type=int, default=2, help="warm containers per actor")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per sample (wall clock)")
    parser.add_argument("--memory-mb", type=int, default=512, help="memory per container (swap off)")
    parser.add_argument("--fresh-container", action="store_true", help="a new container for every sample")
    parser.add_argument(
        "--num-cpus", type=positive, default=None, help="CPUs of a local Ray (no RAY_ADDRESS)"
    )
    parser.add_argument("--no-progress", action="store_true")


def run_eval(args: argparse.Namespace) -> int:
    from taskray.core.raycluster import cluster_cpus, init_ray
    from taskray.core.storage import Store
    from taskray.evaluate import humaneval
    from taskray.evaluate.job import (
        evaluate,
        make_jobs,
        metrics,
        preflight,
        self_check_samples,
        write_outputs,
    )
    from taskray.sandbox.client import ContainerLimits

    for name in ("repeat", "containers", "workers", "num_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise BadInput(f"--timeout {args.timeout}: must be a positive number of seconds")
    if args.memory_mb < 64:  # below this the Python runner cannot start: every job would look like infra
        raise BadInput(f"--memory-mb {args.memory_mb}: must be at least 64")
    problems = humaneval.load_problems(args.problems)
    if args.self_check:
        samples = self_check_samples(problems, args.repeat)
    else:
        samples = humaneval.load_samples(args.samples, problems)
    jobs = make_jobs(problems, samples, args.timeout)
    Store(args.out).check_writable("--out")
    preflight()
    cpus = cluster_cpus(args.num_cpus)
    if args.workers and args.workers > cpus:  # each worker holds a CPU: the rest would wait forever
        raise BadInput(f"--workers {args.workers}: the Ray cluster has {cpus} CPUs, one per worker")
    init_ray(num_cpus=args.num_cpus, background=True)  # batches run here until Ray is up
    workers = args.workers or max(1, cpus)
    limits = ContainerLimits(memory_mb=args.memory_mb)
    say(
        "eval",
        f"{len(jobs)} samples of {len({s['task_id'] for s in samples})} tasks on {workers} actor(s) "
        f"x {args.containers} container(s)",
    )
    start = time.monotonic()
    rows = evaluate(
        jobs, args.out, workers, args.containers, limits, args.fresh_container, not args.no_progress, problems
    )
    wall = time.monotonic() - start
    summary = {
        **metrics(rows),
        "problems": args.problems,
        "samples_file": None if args.self_check else args.samples,
        "self_check": args.self_check,
        "wall_time": wall,
        "samples_per_s": len(rows) / wall if wall else None,
        "workers": workers,
        "containers_per_worker": args.containers,
        "fresh_container": args.fresh_container,
    }
    write_outputs(args.out, rows, summary)
    print(json.dumps({k: summary[k] for k in ("passed", "samples", "counts", "pass_at_k", "samples_per_s")}))
    say(
        "eval",
        f"{summary['passed']}/{summary['samples']} passed in {wall:.1f}s "
        f"({summary['samples_per_s']:.0f} samples/s); wrote {args.out}",
    )
    if summary["infra_errors"]:
        raise JobFailed(
            f"{summary['infra_errors']} sample(s) hit infrastructure errors after retries; they are "
            f"excluded from pass@k (rows in {args.out}); rerun to retry them"
        )
    if args.self_check and summary["passed"] != summary["samples"]:
        failed = sorted({r["task_id"] for r in rows if r["status"] != "passed"})
        raise JobFailed(f"self-check: canonical solutions failed for {failed[:20]}")
    return 0


COMMANDS = {"eval": (eval_arguments, run_eval)}
