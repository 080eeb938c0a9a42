"""Throughput of `taskray verify` against Harbor-style one-trial-at-a-time `docker run`, in one run.

    taskray sandbox build && python benchmarks/verify.py [--tasks 40] [--environments 4]

Small Python tasks (solve.sh writes a file, test.sh checks it with python3 and writes the reward) over a
few distinct environments, built FROM the offline Debian stand-in (taskray.verify.bases):
1. image builds per minute: taskray verify with none of the environments' images present;
2. tasks verified per minute with the images cached: taskray verify again into a fresh DEST (oracle and
   null trial per task), Ray start-up included;
3. the same tasks the way Harbor runs them: one at a time, each trial a `docker run -d ... sleep
   infinity`, `docker cp` of solution/ and tests/, `docker exec` of solve.sh and test.sh, `docker cp` of
   the reward, `docker rm -f`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOLVE = "#!/bin/bash\nmkdir -p /app && echo 42 > /app/answer.txt\n"
TEST = (
    "#!/bin/bash\nmkdir -p /logs/verifier\n"
    "python3 -c \"import sys; sys.exit(open('/app/answer.txt').read().strip() != '42')\" 2>/dev/null "
    "&& echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n"
)


def task_files(env: int) -> dict[str, str]:
    return {
        "task.toml": 'version = "1.0"\n[verifier]\ntimeout_sec = 60\n[agent]\ntimeout_sec = 60\n',
        "instruction.md": "Write 42 to /app/answer.txt.\n",
        "environment/Dockerfile": f"FROM debian:bookworm\nWORKDIR /app\nENV BENCH_ENV={env}\n",
        "solution/solve.sh": SOLVE,
        "tests/test.sh": TEST,
    }


def harbor_style(image: str, files: dict[str, str], work: Path) -> float:
    """One task as Harbor runs it (oracle trial, then null trial), with the docker CLI; its reward."""
    for folder in ("solution", "tests"):
        (work / folder).mkdir(parents=True, exist_ok=True)
        name = "solve.sh" if folder == "solution" else "test.sh"
        (work / folder / name).write_text(files[f"{folder}/{name}"])
    rewards = []
    for oracle in (True, False):
        cid = subprocess.run(
            ["docker", "run", "-d", "--network", "none", image, "sleep", "infinity"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        try:
            if oracle:
                subprocess.run(["docker", "cp", str(work / "solution"), f"{cid}:/solution"], check=True)
                subprocess.run(["docker", "exec", cid, "bash", "/solution/solve.sh"], capture_output=True)
            subprocess.run(["docker", "cp", str(work / "tests"), f"{cid}:/tests"], check=True)
            subprocess.run(["docker", "exec", cid, "bash", "/tests/test.sh"], capture_output=True)
            out = subprocess.run(
                ["docker", "exec", cid, "cat", "/logs/verifier/reward.txt"], capture_output=True, text=True
            )
            rewards.append(float(out.stdout.strip() or "nan"))
        finally:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return rewards[0] - rewards[1]  # 1.0 when the oracle earned 1 and the null 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--environments", type=int, default=4)
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from taskray.core.raycluster import init_ray
    from taskray.sandbox.daemon import docker_client
    from taskray.scan import scan
    from taskray.scan.synth import task_blob
    from taskray.verify.bases import default_map, ensure_base
    from taskray.verify.job import verify

    client = docker_client()
    ensure_base(client)
    tmp = Path(tempfile.mkdtemp(prefix="taskray-bench-verify-"))
    tasks = {f"t{i:04d}": task_files(i % args.environments) for i in range(args.tasks)}
    src = tmp / "src" / "bench__verify"
    src.mkdir(parents=True)
    pq.write_table(
        pa.table({"path": list(tasks), "task_binary": [task_blob(f) for f in tasks.values()]}),
        src / "tasks.parquet",
    )
    init_ray(args.num_cpus)
    scan(str(src.parent), str(tmp / "scan"))
    for image in client.images.list(name="taskray-verify"):  # cold: no environment image yet
        if image.labels.get("taskray.verify.environment"):
            client.images.remove(image.id, force=True)

    t0 = time.monotonic()
    verify(str(tmp / "scan"), str(tmp / "cold"), offline=True)
    cold = time.monotonic() - t0
    rows = pq.read_table(tmp / "cold" / "catalog" / "verify.parquet").to_pylist()
    builds = [r["build_seconds"] for r in rows if r["build_seconds"]]
    t0 = time.monotonic()
    verify(str(tmp / "scan"), str(tmp / "warm"), offline=True)
    warm = time.monotonic() - t0
    warm_rows = pq.read_table(tmp / "warm" / "catalog" / "verify.parquet").to_pylist()
    assert {r["verdict"] for r in warm_rows} == {"verified"}, {r["verdict"] for r in warm_rows}

    images = {r["path"]: r["image"] for r in warm_rows}
    t0 = time.monotonic()
    margins = [harbor_style(images[p], files, tmp / "harbor" / p) for p, files in tasks.items()]
    harbor = time.monotonic() - t0
    assert all(m == 1.0 for m in margins), margins

    n, base = len(tasks), default_map()["debian:bookworm"]
    print(f"corpus: {n} small Python tasks over {args.environments} environments, FROM {base}")
    build_time = max(sum(builds), 1e-9)
    print(f"image builds: {len(builds)} in {build_time:.1f}s -> {60 * len(builds) / build_time:.1f}/min")
    print(f"  (the cold run, builds and trials: {cold:.1f}s)")
    print(f"taskray verify, images cached: {n} tasks in {warm:.1f}s -> {60 * n / warm:.1f} tasks/min")
    print(f"Harbor-style one at a time: {n} tasks in {harbor:.1f}s -> {60 * n / harbor:.1f} tasks/min")
    print(f"ratio: {harbor / warm:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
