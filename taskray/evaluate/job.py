"""The eval job: HumanEval-style samples run in Docker sandboxes on a pool of Ray actors.

Each `EvalWorker` actor owns a warm pool of containers and runs a batch of samples on all of them at
once; the shared runner (core/runner.py) places the actors by CPU across nodes, keeps two batches queued
per actor, records each finished batch (so an interrupted eval resumes), and retries a batch whose actor
or node died. The job then writes `samples.parquet` + `samples.jsonl` (one row per sample, in input
order) and, last, `metrics.json` (pass@k for k <= samples per task, counts per status; infra errors are
left out of pass@k and counted on their own) to DEST, a local folder or s3:// prefix.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable

from taskray.core.console import Progress
from taskray.core.runner import finished_items, mark_complete, run_items
from taskray.core.storage import Store
from taskray.evaluate import humaneval
from taskray.sandbox.client import RETURNED_TYPE, STATUSES, ContainerLimits

BATCH = 32  # samples per actor call: big enough to hide the call overhead, small enough to balance load
CONCURRENT_BATCHES = 2  # per actor: a container freed by a fast job takes the next batch's work


class EvalWorker:
    """The runner's worker: owns `containers` warm sandboxes; runs a batch of jobs on all of them."""

    while_ray_starts = "driver"  # the samples run in containers: nothing in a batch can crash the process

    def __init__(self, containers: int, limits: dict, fresh: bool):
        from taskray.sandbox.pool import SandboxPool

        self.pool = SandboxPool(size=containers, limits=ContainerLimits(**limits), fresh=fresh)
        # The runner calls close() when the actor is done; atexit covers an actor that ends otherwise but
        # gracefully. (A killed actor cannot clean up: its containers exit with their stdin, and the next
        # pool's gc removes them.)
        atexit.register(self.pool.close)

    def close(self) -> None:
        self.pool.close()

    def __call__(self, item: dict) -> dict:
        jobs = item["jobs"]
        if "probe" in item:  # a reference solution first: the types it returns are honest for its problem
            probe = item["probe"]
            ran = self.pool.run(probe["sources"], probe["timeout"], probe["judge"])
            if ran.status == "infra_error":  # no verdict either way: these samples are run again later
                return {"rows": [{**_row(j), **ran.to_dict()} for j in jobs]}
            if not ran.passed or not ran.returns:
                return {"rows": []}  # the reference itself returns plain data: the verdicts stand
            jobs = [{**j, "judge": {**j["judge"], "allowed_types": ran.returns}} for j in jobs]
        results = self.pool.map((job["sources"], job["timeout"], job.get("judge")) for job in jobs)
        return {"rows": [{**_row(j), **r.to_dict()} for j, r in zip(jobs, results)]}


def _row(job: dict) -> dict:
    return {"task_id": job["task_id"], "sample": job["sample"]}


def make_jobs(problems: list[dict], samples: list[dict], timeout: float) -> list[dict]:
    by_id = {p["task_id"]: p for p in problems}
    jobs = []
    for s in samples:
        sources, judge = humaneval.judged_parts(by_id[s["task_id"]], s["completion"])
        jobs.append(
            {
                "task_id": s["task_id"],
                "sample": s["sample"],
                "timeout": timeout,
                "sources": sources,
                "judge": judge,
            }
        )
    return jobs


def rejudge_items(problems: list[dict], jobs: list[dict], rows: list[dict]) -> dict[str, dict]:
    """Problems where samples failed only for returning a non-plain type: each an item that runs the
    reference solution first and, if it returns such types too, the samples again with those allowed."""
    by_id = {p["task_id"]: p for p in problems}
    typed = {
        (r["task_id"], r["sample"]) for r in rows if r["status"] == "failed" and RETURNED_TYPE in r["detail"]
    }
    by_task: dict[str, list[dict]] = {}
    for job in jobs:
        if (job["task_id"], job["sample"]) in typed:
            by_task.setdefault(job["task_id"], []).append(job)
    items = {}
    for task_id, task_jobs in by_task.items():
        problem = by_id[task_id]
        sources, judge = humaneval.probe_parts(problem, humaneval.canonical_completion(problem))
        probe = {"sources": sources, "timeout": task_jobs[0]["timeout"], "judge": judge}
        # named by its samples too: a resumed run whose retried batches failed other samples for their
        # types judges those again rather than taking an earlier rejudgement of other samples for them
        samples = hashlib.sha256(json.dumps([j["sample"] for j in task_jobs]).encode()).hexdigest()[:12]
        items[f"rejudge-{task_id}-{samples}"] = {"probe": probe, "jobs": task_jobs}
    return items


def self_check_samples(problems: list[dict], repeat: int = 1) -> list[dict]:
    """Each problem's canonical solution, `repeat` times (as samples 0..repeat-1)."""
    return [
        {"task_id": p["task_id"], "sample": i, "completion": humaneval.canonical_completion(p)}
        for i in range(repeat)
        for p in problems
    ]


def evaluate(
    jobs: list[dict],
    out: str,
    workers: int,
    containers: int,
    limits: ContainerLimits,
    fresh: bool = False,
    progress: bool = True,
    problems: list[dict] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run jobs on `workers` actors, recording finished batches under `out`; rows come back in job
    order. Ray must be initialised. With `problems`, samples that failed only for returning a type
    other than plain data are judged again if the problem's reference solution returns that type too.
    `on_batch` is told the number of samples finished after each batch (benchmarks time the run by it)."""
    store = Store(out)
    batches = {f"batch-{i // BATCH:06d}": {"jobs": jobs[i : i + BATCH]} for i in range(0, len(jobs), BATCH)}
    plan = {"jobs": jobs, "limits": vars(limits), "fresh": fresh}
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    # a batch whose samples hit infrastructure errors is run again: those are not verdicts
    done = finished_items(
        store, plan_id, redo=lambda r: any(row["status"] == "infra_error" for row in r["rows"])
    )
    todo = {k: v for k, v in batches.items() if k not in done}
    bar = Progress("eval", len(jobs)) if progress else None
    tally: Counter = Counter(r["status"] for k, res in done.items() if k in batches for r in res["rows"])
    finished = sum(tally.values())
    worker_args = {"containers": containers, "limits": vars(limits), "fresh": fresh}
    for key, result in run_items(
        todo, EvalWorker, store, plan_id, worker_args, actors=workers, concurrent_calls=CONCURRENT_BATCHES
    ):
        done[key] = result
        tally.update(r["status"] for r in result["rows"])
        finished += len(result["rows"])
        if on_batch:
            on_batch(finished)
        if bar:
            counts = ", ".join(f"{s} {tally[s]}" for s in STATUSES if tally[s])
            bar.update(
                finished, f"{finished}/{len(jobs)} samples | {counts} | {finished / bar.elapsed:,.0f}/s"
            )
    rows = [row for key in sorted(batches) for row in done[key]["rows"]]
    rejudge = rejudge_items(problems or [], jobs, rows)
    todo = {k: v for k, v in rejudge.items() if k not in done}
    for key, result in run_items(todo, EvalWorker, store, plan_id, worker_args, actors=workers):
        done[key] = result
    again = {(r["task_id"], r["sample"]): r for k in rejudge for r in done[k]["rows"]}
    return [again.get((r["task_id"], r["sample"]), r) for r in rows]


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


def write_outputs(out: str, rows: list[dict], summary: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Store(out)
    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes("samples.parquet", buf.getvalue())
    store.write_bytes("samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    mark_complete(store, "metrics.json", summary)


def preflight() -> None:
    """Fail early, in words, when this machine should run sandboxes but cannot.

    On a cluster (RAY_ADDRESS) the driver's node may have no Docker at all; the actors check their own.
    """
    from taskray.sandbox.daemon import SandboxUnavailable, docker_client, image_name
    from taskray.sandbox.image import image_state

    try:
        client = docker_client(timeout=30)
    except SandboxUnavailable:
        if os.environ.get("RAY_ADDRESS"):
            return
        raise
    state = image_state(client)
    if state != "ok":
        raise SandboxUnavailable(
            f"sandbox image {image_name()} is {state}: run `taskray sandbox build` first"
        )
