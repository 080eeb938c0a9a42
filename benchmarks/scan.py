"""Scan throughput: the article's single-process loop vs `taskray scan` at 1 and 2 CPUs, in one run.

    python benchmarks/scan.py [--tasks 100000]

Every contender reads the same synthetic corpus shaped like TaskTrove (`taskray synth --profile
tasktrove`: nearly every blob a gzip'd Harbor tar of about 5 KB across all verifier families, with a
little zip, xz, JSON, text, junk and corruption; no compression bombs, which the article's loop cannot
survive) in its own process, and we sample the RSS of its whole process tree (for taskray: driver,
raylet, workers). Ratios are computed within this run: these machines are shared and absolute numbers
drift.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

from taskray.detect import ARTICLE_JSON_KEYS, ARTICLE_NAME_TOKENS  # the article's rule, one definition

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
    from taskray.raycluster import init_ray
    from taskray.scan import scan

    init_ray(num_cpus=cpus)  # Ray start-up is not part of the scan's throughput
    result = scan(corpus, out, report=False, log=lambda *_: None)
    from taskray.report import read_catalog

    t = read_catalog(out, ["compressed_bytes", "has_verifier"])
    return {
        "tasks": t.num_rows,
        "bytes": sum(t["compressed_bytes"].to_pylist()),
        "verified": sum(t["has_verifier"].to_pylist()),
        "seconds": result.seconds,
    }


def measure(cmd: list[str]) -> tuple[dict, float]:
    """Run a child, sampling the summed RSS of its process tree; returns (its JSON line, peak MB)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--work", default="/tmp/taskray-bench-scan")
    parser.add_argument("--child", choices=["article", "taskray"], help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    corpus = Path(args.work) / f"tasktrove-like-{args.tasks}"

    if args.child == "article":
        print(json.dumps(child_article(str(corpus))))
        return
    if args.child == "taskray":
        print(
            json.dumps(
                child_taskray(
                    str(corpus), args.cpus, str(Path(args.work) / f"out-{args.cpus}-{time.time_ns()}")
                )
            )
        )
        return

    if not (corpus / "done").exists():
        from taskray.synth import synth_corpus

        print(f"generating {args.tasks:,} tasks into {corpus} ...", flush=True)
        synth_corpus(corpus, args.tasks, sources=8, seed=0, row_group_size=1000, profile="tasktrove")
        (corpus / "done").write_text("ok")
    me = [sys.executable, __file__, "--tasks", str(args.tasks), "--work", args.work]
    results = {}
    for name, extra in (
        ("article loop (1 process)", ["--child", "article"]),
        ("taskray scan, 1 CPU", ["--child", "taskray", "--cpus", "1"]),
        ("taskray scan, 2 CPUs", ["--child", "taskray", "--cpus", "2"]),
    ):
        print(f"running {name} ...", flush=True)
        results[name] = measure(me + extra)
    base = results["article loop (1 process)"][0]
    print(f"\ncorpus: {base['tasks']:,} tasks, {base['bytes'] / 1e6:.1f} MB of blobs\n")
    print("| contender | tasks/s | MB/s | vs article | peak RSS (tree) | verified |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (r, rss) in results.items():
        rate = r["tasks"] / r["seconds"]
        print(
            f"| {name} | {rate:,.0f} | {r['bytes'] / r['seconds'] / 1e6:.1f} | "
            f"{rate / (base['tasks'] / base['seconds']):.1f}x | {rss:,.0f} MB | {r['verified']:,} |"
        )
    one, two = (results[k][0] for k in ("taskray scan, 1 CPU", "taskray scan, 2 CPUs"))
    print(f"\nscaling 1 -> 2 CPUs: {one['seconds'] / two['seconds']:.2f}x")


if __name__ == "__main__":
    main()
