"""Scan throughput: the article's single-process loop vs `taskray scan` at 1 and 2 CPUs, in one run.

    python benchmarks/scan.py [--tasks 300000] [--rounds 2] [--profile real|tasktrove]
    python benchmarks/scan.py --tasks 1850000 --profile tasktrove   # TaskTrove's own size

Start-up (Ray's processes and the actors importing on 2 cores) is a fixed few seconds, so the smaller
default corpus shows a lower ratio than a scan of the full corpus; the README reports both.

Every contender reads the same corpus, by default built from the real Harbor tasks in
../shared/data/harbor-tasks (`taskray synth --profile real`: each row one of them, its instruction
varied, plus a log-normal data file; about 5 KB compressed and 25 KB raw per task, like TaskTrove's),
or with `--profile tasktrove` the synthetic one (nearly every blob a gzip'd Harbor tar of about 3 KB
across all verifier families, with a little zip, xz, JSON, text, junk and corruption; no compression
bombs, which the article's loop cannot survive), in its own process tree, pinned to the CPUs it is
given (`taskset`, inherited by every Ray process), and we sample the RSS of the whole tree (for
taskray: driver, its child, raylet, workers).
Library imports are not timed, for either side; taskray's time includes starting Ray (end to end, as a
user waits for it: the scan runs pieces in a child process meanwhile), and how long Ray took to start is
shown beside.

Two more measurements put the ratios in context, because on a shared 2-core VM the second core is not
always a whole core: the in-process hot loop (`scan_blobs`, no Ray) alone and as two copies at once,
one per core, which is how well the per-task work itself scales here; and the fixed cost of a scan (a
scan of a 1,000-task corpus). Ratios are computed within this run (rounds interleaved, best of each kept):
absolute numbers drift on these machines.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from taskray.scan.detect import ARTICLE_JSON_KEYS, ARTICLE_NAME_TOKENS  # the article's rule, one definition

HARBOR_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "harbor-tasks"
ARTICLE_KEYS = set(ARTICLE_JSON_KEYS)


def article_is_verified(blob: bytes) -> bool:
    """The article's rule, as it was written: gunzip, open tar/zip, decode every file, look at names and
    top-level JSON keys."""
    try:
        data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    except Exception:
        return False
    files: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    files[m.name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    except Exception:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for name in zf.namelist():
                    files[name] = zf.read(name).decode("utf-8", errors="replace")
        except Exception:
            files = {"<blob>": data.decode("utf-8", errors="replace")}
    for name, text in files.items():
        if any(t in name.lower() for t in ARTICLE_NAME_TOKENS):
            return True
        if name.endswith(".json") or name == "<blob>":
            try:
                obj = json.loads(text)
            except ValueError:
                continue
            if isinstance(obj, dict) and ARTICLE_KEYS & set(obj):
                return True
    return False


def child_article(corpus: str) -> dict:
    from datasets import load_dataset

    files = sorted(str(p) for p in Path(corpus).rglob("tasks.parquet"))
    start = time.perf_counter()
    rows = verified = nbytes = 0
    for row in load_dataset("parquet", data_files=files, split="train", streaming=True):
        rows += 1
        nbytes += len(row["task_binary"])
        verified += article_is_verified(row["task_binary"])
    return {"tasks": rows, "bytes": nbytes, "verified": verified, "seconds": time.perf_counter() - start}


def child_taskray(corpus: str, cpus: int, out: str) -> dict:
    import ray  # noqa: F401  (imports are not timed, as for the article's `datasets`)

    from taskray.core.raycluster import ray_start_seconds
    from taskray.scan.job import scan

    start = time.perf_counter()
    scan(corpus, out, report=False, num_cpus=cpus)  # starts Ray, and scans while it starts
    seconds = time.perf_counter() - start
    from taskray.scan.catalog import read_catalog

    t = read_catalog(out, ["compressed_bytes", "has_verifier"])
    shutil.rmtree(out)
    return {
        "tasks": t.num_rows,
        "bytes": sum(t["compressed_bytes"].to_pylist()),
        "verified": sum(t["has_verifier"].to_pylist()),
        "seconds": seconds,
        "ray_start_seconds": ray_start_seconds(),
    }


def child_hot_loop(corpus: str) -> dict:
    """taskray's per-task work (parse, detect, catalog columns) in one process, no Ray, on one shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from taskray.scan.catalog import CATALOG_SCHEMA, scan_blobs
    from taskray.scan.job import BATCH_ROWS

    table = pq.read_table(sorted(Path(corpus).rglob("tasks.parquet"))[0])
    paths, blobs = table.column(0).to_pylist(), table.column(1).to_pylist()
    start = time.perf_counter()
    for i in range(0, len(blobs), BATCH_ROWS):
        batch = slice(i, i + BATCH_ROWS)  # the batches a scan's workers see
        pa.table(scan_blobs("s", "x", i, paths[batch], blobs[batch]), schema=CATALOG_SCHEMA)
    return {"tasks": len(blobs), "seconds": time.perf_counter() - start}


def measure(cmd: list[str], cpus: set[int]) -> tuple[dict, float]:
    """Run a child on `cpus`, sampling the summed RSS of its process tree; returns (its JSON line, peak
    MB)."""
    import psutil

    # taskset execs the child in place (same pid), and Ray's processes inherit its CPU set
    pinned = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    proc = subprocess.Popen(pinned, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300_000)
    parser.add_argument("--work", default="/tmp/taskray-bench-scan")
    parser.add_argument("--rounds", type=int, default=2, help="measure everything this many times")
    parser.add_argument("--child", choices=["article", "taskray", "hot-loop"], help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=["real", "tasktrove"], default="real")
    parser.add_argument("--tasks-from", default=str(HARBOR_TASKS), help="real tasks for --profile real")
    args = parser.parse_args()

    if args.child:
        out = str(Path(args.work) / f"out-{args.cpus}-{time.time_ns()}")
        run = {
            "article": lambda: child_article(args.corpus),
            "taskray": lambda: child_taskray(args.corpus, args.cpus, out),
            "hot-loop": lambda: child_hot_loop(args.corpus),
        }[args.child]
        print(json.dumps(run()))
        return

    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("this benchmark needs 2 CPUs")
    one, two = set(sorted(os.sched_getaffinity(0))[:1]), set(sorted(os.sched_getaffinity(0))[:2])
    corpus, tiny = (corpus_of(args.work, n, args.profile, args.tasks_from) for n in (args.tasks, 1000))
    me = [sys.executable, __file__, "--work", args.work]
    hot = me + ["--child", "hot-loop", "--corpus", corpus]
    contenders = {
        "article loop (1 process)": (me + ["--child", "article", "--corpus", corpus], one),
        "taskray scan, 1 CPU": (me + ["--child", "taskray", "--cpus", "1", "--corpus", corpus], one),
        "taskray scan, 2 CPUs": (me + ["--child", "taskray", "--cpus", "2", "--corpus", corpus], two),
    }
    # Every measurement is taken once per round, the rounds interleaved, and the fastest kept: noise from
    # other tenants only ever slows a run down, and interleaving spreads it over all contenders alike.
    runs: dict[str, list] = {}
    for round_ in range(1, args.rounds + 1):
        for name, (cmd, cpus) in contenders.items():
            print(f"round {round_}/{args.rounds}: {name} ...", flush=True)
            runs.setdefault(name, []).append(measure(cmd, cpus))
        print(f"round {round_}/{args.rounds}: machine checks ...", flush=True)
        runs.setdefault("alone", []).append(rate(measure(hot, one)[0]))
        with ThreadPoolExecutor(2) as pool:  # one copy per core, at the same time
            pair = pool.map(lambda cpu: measure(hot, {cpu}), two)
            runs.setdefault("pair", []).append([rate(r) for r, _ in pair])
        tiny_scan = me + ["--child", "taskray", "--cpus", "2", "--corpus", tiny]
        runs.setdefault("fixed", []).append(measure(tiny_scan, two)[0]["seconds"])

    results = {
        name: (min((r for r, _ in runs[name]), key=lambda r: r["seconds"]), max(rss for _, rss in runs[name]))
        for name in contenders
    }
    alone, pair, fixed = max(runs["alone"]), max(runs["pair"], key=sum), min(runs["fixed"])
    base = results["article loop (1 process)"][0]
    mb = base["bytes"] / 1e6
    print(f"\ncorpus: {base['tasks']:,} tasks, {mb:.1f} MB of blobs; best of {args.rounds} rounds")
    print("\n| contender | tasks/s, end to end | MB/s | vs article | Ray's start (scanning meanwhile) "
          "| peak RSS (tree) | verified |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (r, rss) in results.items():
        ray_start = f"{r['ray_start_seconds']:.1f} s" if r.get("ray_start_seconds") else ""
        print(
            f"| {name} | {rate(r):,.0f} | {r['bytes'] / r['seconds'] / 1e6:.1f} | "
            f"{rate(r) / rate(base):.1f}x | {ray_start} | {rss:,.0f} MB | {r['verified']:,} |"
        )
    single, double = results["taskray scan, 1 CPU"][0], results["taskray scan, 2 CPUs"][0]
    scaling = single["seconds"] / double["seconds"]
    print(
        f"\nscaling 1 -> 2 CPUs: {scaling:.2f}x end to end. Per-task "
        f"work alone scales {sum(pair) / alone:.2f}x (the "
        f"hot loop, no Ray: {alone:,.0f} tasks/s alone, {alone / rate(base):.1f}x the article; two copies at "
        f"once: {' + '.join(f'{p:,.0f}' for p in pair)})"
    )
    print(f"fixed cost of a scan (1,000 tasks, 2 CPUs, Ray start included): {fixed:.1f} s")
    every = {name: [round(rate(r)) for r, _ in runs[name]] for name in contenders}
    print(f"every round (tasks/s): {json.dumps(every)}")


def rate(result: dict) -> float:
    return result["tasks"] / result["seconds"]


def corpus_of(work: str, tasks: int, profile: str, tasks_from: str) -> str:
    from taskray.scan.synth import SYNTH_VERSION

    corpus = Path(work) / f"{profile}-{tasks}-v{SYNTH_VERSION}"
    if not (corpus / "done").exists():
        from taskray.scan.synth import synth_corpus

        print(f"generating {tasks:,} tasks ({profile}) into {corpus} ...", flush=True)
        real = {"tasks_from": tasks_from} if profile == "real" else {}
        synth_corpus(corpus, tasks, sources=8, seed=0, row_group_size=1000, profile=profile, **real)
        (corpus / "done").write_text("ok")
    return str(corpus)


if __name__ == "__main__":
    main()
