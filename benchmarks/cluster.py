"""Scan and eval throughput on a simulated Ray cluster of 1, 2 and 4 nodes on this one machine.

    taskray sandbox build && python benchmarks/cluster.py [--tasks 200000] [--repeat 5]

Each size is a fresh `ray.cluster_utils.Cluster`: a head and worker raylets, one CPU each, all on this
machine. Jobs run as users run them against a cluster: `taskray scan` / `taskray eval` as separate driver
processes with RAY_ADDRESS, timed end to end (connecting, planning, running, writing outputs). On a 2-core
machine four one-CPU nodes share two cores, so the table shows what more nodes *cost* (more raylets, more
actors, more scheduling), not a speed-up; see the README for the model of a real cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL = ROOT.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def timed(cmd: list[str], env: dict) -> float:
    started = time.monotonic()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{run.stderr[-2000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000, help="synthetic TaskTrove tasks to scan")
    parser.add_argument("--repeat", type=int, default=5, help="HumanEval self-check samples per problem")
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="taskray-cluster-bench-"))
    corpus = work / "corpus"
    py = sys.executable
    synth = [py, "-m", "taskray", "synth", str(corpus), "--tasks", str(args.tasks), "--profile", "tasktrove"]
    subprocess.run(synth, check=True, capture_output=True)
    samples = 164 * args.repeat
    rows = []
    for nodes in (1, 2, 4):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        try:
            scan_cmd = [py, "-m", "taskray", "scan", str(corpus), "--out", str(work / f"scan-{nodes}")]
            scan_s = timed(scan_cmd, env)
            eval_cmd = [py, "-m", "taskray", "eval", "--problems", f"humaneval:{HUMANEVAL}", "--self-check"]
            eval_cmd += ["--repeat", str(args.repeat), "--out", str(work / f"eval-{nodes}"), "--no-progress"]
            eval_s = timed(eval_cmd, env)
        finally:
            cluster.shutdown()
        rows.append((nodes, args.tasks / scan_s, samples / eval_s))
        _, scan_rate, eval_rate = rows[-1]
        print(f"{nodes} node(s): scan {scan_rate:,.0f} tasks/s, eval {eval_rate:,.1f} samples/s", flush=True)

    print(f"\n{args.tasks:,} tasks scanned, {samples:,} samples evaluated; {os.cpu_count()} cores, one run")
    print("| nodes (1 CPU each) | scan tasks/s | vs 1 node | eval samples/s | vs 1 node |")
    print("|---|---|---|---|---|")
    for nodes, scan_rate, eval_rate in rows:
        print(
            f"| {nodes} | {scan_rate:,.0f} | {scan_rate / rows[0][1]:.2f}x "
            f"| {eval_rate:,.1f} | {eval_rate / rows[0][2]:.2f}x |"
        )


if __name__ == "__main__":
    main()
