"""`taskray eval`: run HumanEval-style samples in Docker sandboxes spread over Ray actors.

    taskray eval --problems humaneval:HumanEval.jsonl.gz --samples samples.jsonl --out DEST
    taskray eval --problems humaneval --self-check --out DEST

Each `EvalWorker` actor owns a warm pool of containers and runs batches of jobs on them; Ray places the
actors by CPU across nodes. The driver keeps every actor busy (two batches in flight each), shows
progress, and writes `samples.parquet` + `samples.jsonl` (one row per sample) and `metrics.json`
(pass@k for k <= samples per task, counts per status; infra errors are left out of pass@k and counted
on their own) to DEST, a local folder or s3:// prefix.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import Counter

import ray

from taskray import humaneval
from taskray.raycluster import init_ray
from taskray.sandbox.client import STATUSES, Limits
from taskray.storage import Store

BATCH = 8  # samples per actor call: big enough to hide the call overhead, small enough to balance load
IN_FLIGHT = 2  # batches queued per actor, so an actor never waits for the driver


# Threaded actor: the queued batches run side by side on the shared pool, so a container freed by a
# fast job takes the next batch's work instead of idling until the slowest job of its batch is done.
@ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2, max_concurrency=IN_FLIGHT)
class EvalWorker:
    """Owns `containers` warm sandboxes; runs batches of jobs on all of them at once."""

    def __init__(self, containers: int, limits: dict, fresh: bool):
        from taskray.sandbox.pool import SandboxPool

        self.pool = SandboxPool(size=containers, limits=Limits(**limits), fresh=fresh)

    def run(self, jobs: list[dict]) -> list[dict]:
        results = self.pool.map((job["sources"], job["timeout"]) for job in jobs)
        return [
            {"task_id": j["task_id"], "sample": j["sample"], **r.to_dict()} for j, r in zip(jobs, results)
        ]

    def close(self) -> int:
        self.pool.close()
        return self.pool.replaced


def make_jobs(problems: list[dict], samples: list[dict], timeout: float) -> list[dict]:
    by_id = {p["task_id"]: p for p in problems}
    return [
        {
            "task_id": s["task_id"],
            "sample": s["sample"],
            "timeout": timeout,
            "sources": humaneval.program_parts(by_id[s["task_id"]], s["completion"]),
        }
        for s in samples
    ]


def self_check_samples(problems: list[dict], repeat: int = 1) -> list[dict]:
    """Each problem's canonical solution, `repeat` times (as samples 0..repeat-1)."""
    return [
        {"task_id": p["task_id"], "sample": i, "completion": humaneval.canonical_completion(p)}
        for i in range(repeat)
        for p in problems
    ]


def metrics(rows: list[dict], ks: tuple[int, ...] = (1, 10, 100)) -> dict:
    """Counts per status and pass@k over the samples that actually ran (infra errors excluded)."""
    per_task: dict[str, list[int]] = {}
    for r in rows:
        if r["status"] != "infra_error":
            n_c = per_task.setdefault(r["task_id"], [0, 0])
            n_c[0] += 1
            n_c[1] += r["status"] == "passed"
    counts = Counter(r["status"] for r in rows)
    return {
        "samples": len(rows),
        "tasks": len({r["task_id"] for r in rows}),
        "passed": counts["passed"],
        "counts": {s: counts[s] for s in STATUSES},
        "infra_errors": counts["infra_error"],
        "pass_at_k": humaneval.pass_at_k_table({t: (n, c) for t, (n, c) in per_task.items()}, ks),
    }


def evaluate(
    jobs: list[dict],
    workers: int,
    containers: int,
    limits: Limits,
    fresh: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Run jobs on `workers` actors; rows come back in job order."""
    from tqdm import tqdm

    actors = [EvalWorker.remote(containers, vars(limits), fresh) for _ in range(workers)]
    batches = [list(range(i, min(i + BATCH, len(jobs)))) for i in range(0, len(jobs), BATCH)]
    rows: list[dict | None] = [None] * len(jobs)
    pending: dict = {}  # object ref -> (actor, batch)
    todo = iter(batches)
    bar = tqdm(total=len(jobs), unit="sample", desc="eval", disable=not progress, file=sys.stderr)
    tally: Counter = Counter()

    def submit(actor) -> bool:
        batch = next(todo, None)
        if batch is None:
            return False
        pending[actor.run.remote([jobs[i] for i in batch])] = (actor, batch)
        return True

    try:
        for actor in actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, batch = pending.pop(done[0])
            for i, row in zip(batch, ray.get(done[0])):
                rows[i] = row
                tally[row["status"]] += 1
            bar.update(len(batch))
            bar.set_postfix({s: tally[s] for s in STATUSES if tally[s]}, refresh=False)
            submit(actor)
    finally:
        bar.close()
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=120)
            except Exception:
                pass  # the actor is gone; its containers stop when their stdin closes, gc removes them
            ray.kill(actor)
    return rows  # type: ignore[return-value]


def write_outputs(out: str, rows: list[dict], summary: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Store(out)
    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes("samples.parquet", buf.getvalue())
    store.write_bytes("samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    store.write_bytes("metrics.json", (json.dumps(summary, indent=2) + "\n").encode())


def preflight() -> None:
    """Fail early, in words, when this machine should run sandboxes but cannot.

    On a cluster (RAY_ADDRESS) the driver's node may have no Docker at all; the actors check their own.
    """
    from taskray.sandbox.client import docker_client
    from taskray.sandbox.image import IMAGE, image_state

    try:
        client = docker_client(timeout=30)
    except RuntimeError:
        if os.environ.get("RAY_ADDRESS"):
            return
        raise
    state = image_state(client)
    if state != "ok":
        raise RuntimeError(f"sandbox image {IMAGE} is {state}: run `taskray sandbox build` first")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (no RAY_ADDRESS)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    for name in ("repeat", "containers", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name} {value}: must be at least 1")
    if args.timeout <= 0:
        raise SystemExit(f"--timeout {args.timeout}: must be positive")
    if args.memory_mb < 64:  # below this the Python runner cannot start: every job would look like infra
        raise SystemExit(f"--memory-mb {args.memory_mb}: must be at least 64")
    problems = humaneval.load_problems(args.problems)
    if args.self_check:
        samples = self_check_samples(problems, args.repeat)
    else:
        samples = humaneval.load_samples(args.samples, problems)
    jobs = make_jobs(problems, samples, args.timeout)
    preflight()
    init_ray(num_cpus=args.num_cpus)
    workers = args.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    limits = Limits(memory_mb=args.memory_mb)
    print(
        f"eval: {len(jobs)} samples of {len({s['task_id'] for s in samples})} tasks on {workers} actor(s) "
        f"x {args.containers} container(s)",
        file=sys.stderr,
    )
    start = time.monotonic()
    rows = evaluate(jobs, workers, args.containers, limits, args.fresh_container, not args.no_progress)
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
    print(
        f"eval: {summary['passed']}/{summary['samples']} passed in {wall:.1f}s "
        f"({summary['samples_per_s']:.0f} samples/s); wrote {args.out}",
        file=sys.stderr,
    )
    if summary["infra_errors"]:
        print(
            f"eval: {summary['infra_errors']} sample(s) hit infrastructure errors after retries; "
            "they are excluded from pass@k",
            file=sys.stderr,
        )
        return 2
    if args.self_check and summary["passed"] != summary["samples"]:
        failed = sorted({r["task_id"] for r in rows if r["status"] != "passed"})
        print(f"self-check: canonical solutions failed for {failed[:20]}", file=sys.stderr)
        return 1
    return 0
