"""Every job on a real multi-node Ray cluster (a head and three worker raylets on this machine), with a
worker node SIGKILLed half-way: the job still finishes on the nodes left, in bounded time, and its output
equals a clean run's. Jobs reach the cluster as users do: the CLI with RAY_ADDRESS, `ray job submit`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster import ROOT, LocalCluster, wait_for

from taskray.scan.catalog import read_catalog

JOB_DEADLINE = 300  # a job on a cluster that lost a node must still end well within this


@pytest.fixture
def cluster():
    c = LocalCluster(workers=3)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-corpus")
    cmd = [sys.executable, "-m", "taskray", "synth", str(folder), "--tasks", "40000", "--sources", "4"]
    subprocess.run(cmd, check=True, capture_output=True)
    return folder


def receipts(out: Path) -> int:
    return len(list((out / "_progress").glob("*.json")))


def catalog(out: Path) -> list[dict]:
    rows = read_catalog(str(out)).to_pylist()
    return sorted(rows, key=lambda r: (r["source"], r["shard"], r["row"]))


def finish(proc: subprocess.Popen, started: float) -> str:
    out, err = proc.communicate(timeout=JOB_DEADLINE)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started < JOB_DEADLINE
    return out


def test_scan_survives_a_worker_node_killed_mid_run(cluster, corpus, tmp_path):
    clean = tmp_path / "clean"
    run = cluster.run("scan", str(corpus), "--out", str(clean), "--rows-per-piece", "500")
    assert run.returncode == 0, run.stderr[-3000:]

    killed = tmp_path / "killed"
    started = time.monotonic()
    proc = cluster.taskray("scan", str(corpus), "--out", str(killed), "--rows-per-piece", "500")
    wait_for(lambda: receipts(killed) >= 10, 120, "ten pieces done", proc)
    assert any("ItemActor" in t for t in cluster.actors_on(0))  # the node dies with work in hand
    cluster.kill_worker(0)
    finish(proc, started)
    pieces = json.loads((killed / "plan.json").read_text())["pieces"]
    assert receipts(killed) == len(pieces)  # every piece recorded once
    assert catalog(killed) == catalog(clean)  # row for row

    # the driver killed (`kill -9` of the command, on a cluster short of a node): the same command
    # run again resumes, and the catalog is the clean run's
    resumed = tmp_path / "resumed"
    args = ("scan", str(corpus), "--out", str(resumed), "--rows-per-piece", "500")
    proc = cluster.taskray(*args)
    wait_for(lambda: receipts(resumed) >= 10, 120, "ten pieces done", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = receipts(resumed)
    assert done < len(pieces) and not (resumed / "summary.json").exists()
    rerun = cluster.run(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done} pieces already done" in rerun.stderr
    assert catalog(resumed) == catalog(clean)


@pytest.fixture(scope="module")
def samples(shared_data, tmp_path_factory) -> tuple[str, Path]:
    """240 HumanEval samples: right, wrong and right again for 80 problems. The wrong ones take a moment
    (a third of a second), so a run lasts long enough to lose a node in the middle of it."""
    import gzip

    problems_path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    problems = [json.loads(line) for line in gzip.open(problems_path, "rt")][:80]
    rows = []
    for p in problems:
        slow_and_wrong = "    import time\n    time.sleep(0.3)\n    return None\n"
        for completion in (p["canonical_solution"], slow_and_wrong, p["canonical_solution"]):
            rows.append({"task_id": p["task_id"], "completion": completion})
    path = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"humaneval:{problems_path}", path


def verdicts(out: Path) -> dict[tuple[str, int], str]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    got = {(r["task_id"], r["sample"]): r["status"] for r in rows}
    assert len(got) == len(rows)  # one row per sample
    return got


def test_eval_survives_a_worker_node_killed_while_it_holds_containers(cluster, samples, tmp_path):
    from taskray.sandbox.daemon import LABEL, docker_client, leaked_containers

    problems, path = samples
    args = ("eval", "--problems", problems, "--samples", str(path), "--no-progress")
    clean = tmp_path / "clean"
    run = cluster.run(*args, "--out", str(clean))
    assert run.returncode == 0, run.stderr[-3000:]
    want = verdicts(clean)
    assert len(want) == 240 and sorted(set(want.values())) == ["failed", "passed"]

    killed = tmp_path / "killed"
    client = docker_client()
    started = time.monotonic()
    proc = cluster.taskray(*args, "--out", str(killed))
    wait_for(lambda: receipts(killed) >= 2, 180, "two batches done", proc)
    # the first actors up take every batch in hand (four each), so the node to kill is one that has them
    busy = [i for i in range(len(cluster.workers)) if any("ItemActor" in t for t in cluster.actors_on(i))]
    assert busy
    cluster.kill_worker(busy[0])
    finish(proc, started)
    assert verdicts(killed) == want  # the killed node's samples were run again, not failed
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["infra_errors"] == 0 and metrics["samples"] == 240
    # the dead node's containers are gone; nothing of either run is left
    assert leaked_containers(client) == []
    assert client.api.containers(filters={"label": f"{LABEL}=1", "status": "running"}) == []


def mix_spec(tmp_path: Path, shared_data: Path) -> Path:
    """The mix suite's spec with a larger SpellingBee: 114 shards, a few seconds of rendering."""
    import yaml
    from test_mix_ray import write_spec

    spec = write_spec(tmp_path, shared_data, rows_per_shard=100)
    text = yaml.safe_load(spec.read_text())
    (bee,) = [t for t in text["splits"]["train"] if t["task"] == "spellingbee"]
    bee["args"]["size"] = 20000
    spec.write_text(yaml.safe_dump(text))
    return spec


def shard_hashes(out: str) -> dict[str, str]:
    from taskray.core.storage import Store

    store = Store(out)
    return {rel: hashlib.sha256(store.read_bytes(rel)).hexdigest() for rel in store.list("data")}


def test_mix_shards_are_identical_on_1_2_and_4_nodes_and_with_a_node_killed(
    s3, bucket, shared_data, tmp_path
):
    spec = str(mix_spec(tmp_path, shared_data))
    c = LocalCluster(workers=0)
    try:
        hashes = {}
        for nodes in (1, 2, 4):
            while len(c.workers) + 1 < nodes:
                c.add_worker()
            out = f"s3://{bucket}/nodes-{nodes}"
            run = c.run("mix", spec, "--out", out)
            assert run.returncode == 0, run.stderr[-3000:]
            hashes[nodes] = shard_hashes(out)
        assert len(hashes[1]) == 114 and hashes[1] == hashes[2] == hashes[4]

        out = f"s3://{bucket}/killed"
        started = time.monotonic()
        proc = c.taskray("mix", spec, "--out", out)

        def shards_done() -> int:
            from taskray.core.storage import Store

            return len(list(Store(out).list("_progress")))

        wait_for(lambda: shards_done() >= 5, 120, "five shards done", proc)
        assert any("ItemActor" in t for t in c.actors_on(0))
        c.kill_worker(0)
        finish(proc, started)
        assert shard_hashes(out) == hashes[1]
    finally:
        c.shutdown()


def submit(c: LocalCluster, script: str, *args: str) -> subprocess.Popen:
    """`ray job submit` to the head's dashboard, the working dir uploaded, as users submit jobs."""
    cmd = ["ray", "job", "submit", "--address", c.dashboard_url, "--working-dir", str(ROOT), "--"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # the head accepts jobs once its dashboard agent is up: wait for that, as `ray job list` sees it
    wait_for(
        lambda: (
            subprocess.run(
                ["ray", "job", "list", "--address", c.dashboard_url], env=env, capture_output=True
            ).returncode
            == 0
        ),
        60,
        "the head to accept jobs",
    )
    return subprocess.Popen(
        [*cmd, "python", f"jobs/{script}", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_verify_submitted_as_a_job_survives_a_worker_node_killed(tmp_path):
    from test_verify import WRITE, corpus, harbor_tar

    from taskray.sandbox.daemon import LABEL, docker_client, leaked_containers
    from taskray.sandbox.image import OFFLINE_BASE, REGISTRY_BASE, _have
    from taskray.scan import scan

    client = docker_client()
    base = next(image for image in (OFFLINE_BASE, REGISTRY_BASE) if _have(client, image))
    works = WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt")
    tasks = {
        f"c{i:02d}": harbor_tar(works, dockerfile=f"FROM debian:bookworm\nENV ENV={i % 8}-{tmp_path.name}\n")
        for i in range(24)
    }
    tasks["c-open"] = harbor_tar("mkdir -p /logs/verifier; echo 1 > /logs/verifier/reward.txt\n")
    scanned = str(tmp_path / "scan")
    scan(str(corpus(tmp_path / "src", tasks)), scanned)
    args = (scanned, "--base-map", f"debian:bookworm={base}")

    c = LocalCluster(workers=3, dashboard=True)
    try:
        clean = tmp_path / "clean"
        job = submit(c, "verify.py", *args, "--out", str(clean))
        out, err = job.communicate(timeout=JOB_DEADLINE)
        assert job.returncode == 0, (out + err)[-3000:]

        killed = tmp_path / "killed"
        started = time.monotonic()
        job = submit(c, "verify.py", *args, "--out", str(killed))
        wait_for(lambda: receipts(killed) >= 2, 180, "two environments done", job)
        assert any("ItemActor" in t for t in c.actors_on(0))
        c.kill_worker(0)
        finish(job, started)

        # now that the images exist (on every node here: they share one Docker daemon), a new run sends
        # each environment to a node that holds its image, spread over the nodes
        placed = tmp_path / "placed"
        run = c.run("verify", *args, "--out", str(placed))
        assert run.returncode == 0, run.stderr[-3000:]
        assert "9 environments go to nodes that already hold their images" in run.stderr
        results = [json.loads(line) for line in (placed / "results.jsonl").read_text().splitlines()]
        assert all(r["node"] == r["placed_on"] for r in results), results
        assert len({r["node"] for r in results}) == 3  # head + the two worker nodes left
    finally:
        c.shutdown()
    got = pq.read_table(killed / "catalog" / "verify.parquet").to_pylist()
    want = pq.read_table(clean / "catalog" / "verify.parquet").to_pylist()
    assert sorted(r["path"] for r in got) == sorted(tasks)  # one row per task
    assert {r["path"]: r["verdict"] for r in got} == {r["path"]: r["verdict"] for r in want}
    assert {r["verdict"] for r in got} == {"verified", "accepts_anything"}
    # each environment built at most once: by the clean run, or by the killed one's retried group
    assert len({r["image"] for r in got}) == 9
    assert sum(r["build_seconds"] > 0 for r in got) <= 9 - sum(r["build_seconds"] > 0 for r in want)
    assert leaked_containers(client) == []
    assert client.api.containers(filters={"label": f"{LABEL}=1", "status": "running"}) == []


def test_cluster_configs_pass_ray_s_own_checks():
    """cluster.yaml (AWS), cluster.local.yaml (machines by IP) and the KubeRay RayJob: Ray's own schema
    check (what `ray up` runs first), the files their setup names exist, and all three start the head
    with the same failure detection and the Ray version installed here."""
    import re

    import ray
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    settings = []
    for name in ("cluster.yaml", "cluster.local.yaml"):
        config = yaml.safe_load((ROOT / name).read_text())
        validate_config(prepare_config(config))
        for command in config["setup_commands"]:
            for path in re.findall(r"/home/ubuntu/taskray/([\w./-]+)", command):
                assert (ROOT / path).exists(), (name, path)
        head = " ".join(config["head_start_ray_commands"])
        settings.append(json.loads(re.search(r"--system-config='([^']+)'", head).group(1)))
    local = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    assert local["provider"]["type"] == "local"
    assert len(local["provider"]["worker_ips"]) == local["min_workers"]
    broken = {k: v for k, v in local.items() if k != "provider"}
    with pytest.raises(Exception, match="provider"):
        validate_config(prepare_config(broken))

    job = yaml.safe_load((ROOT / "examples" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert (ROOT / job["spec"]["entrypoint"].split()[1]).exists()  # jobs/<command>.py
    cluster_spec = job["spec"]["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__
    images = [c["image"] for c in cluster_spec["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster_spec["workerGroupSpecs"]:
        images += [c["image"] for c in group["template"]["spec"]["containers"] if c["name"] != "dind"]
    assert all(image.startswith(f"rayproject/ray:{ray.__version__}-py311") for image in images), images
    settings.append(json.loads(cluster_spec["headGroupSpec"]["rayStartParams"]["system-config"]))
    assert settings[0] == settings[1] == settings[2]


def test_a_killed_driver_s_rerun_resumes_eval_and_mix(cluster, samples, shared_data, tmp_path):
    """`kill -9` of the command mid-job, then the same command again: it resumes from the receipts and
    the output equals a clean run's (the scan's case is in the scan test above; verify's in test_verify)."""
    problems, path = samples
    spec = str(mix_spec(tmp_path, shared_data))
    jobs = {
        "eval": ("eval", "--problems", problems, "--samples", str(path), "--no-progress"),
        "mix": ("mix", spec),
    }
    for name, args in jobs.items():
        clean, resumed = tmp_path / f"{name}-clean", tmp_path / f"{name}-resumed"
        run = cluster.run(*args, "--out", str(clean))
        assert run.returncode == 0, run.stderr[-3000:]
        proc = cluster.taskray(*args, "--out", str(resumed))
        wait_for(lambda: receipts(resumed) >= 4, 180, f"{name}: four items done", proc)  # noqa: B023
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert not (resumed / ("metrics.json" if name == "eval" else "manifest.json")).exists()
        rerun = cluster.run(*args, "--out", str(resumed))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        if name == "eval":
            assert verdicts(resumed) == verdicts(clean)
        else:
            assert shard_hashes(str(resumed)) == shard_hashes(str(clean))
            assert (resumed / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()


def test_a_scan_grows_an_autoscaling_cluster_and_the_nodes_idle_out(tmp_path):
    """A scan wants more CPUs than the one-CPU head has: the autoscaler adds nodes, the scan's actor pool
    grows onto them, and once the scan is done the nodes leave again. (A new node takes a while to start
    here, so the scan is a long one.)"""
    from cluster import AutoscalingCluster

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    synth = [sys.executable, "-m", "taskray", "synth", str(corpus), "--tasks", "200000", "--sources", "4"]
    subprocess.run(synth, check=True, capture_output=True)
    c = AutoscalingCluster(max_workers=3, idle_s=10)
    try:
        cmd = [sys.executable, "-m", "taskray", "scan", str(corpus), "--out", str(out)]
        proc = subprocess.Popen(cmd, env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        most_nodes, most_actors = 1, 0
        while proc.poll() is None:
            most_nodes, most_actors = max(most_nodes, c.nodes()), max(most_actors, c.busy_actors())
            time.sleep(0.2)
        out_text, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        # the head has one CPU: a second busy actor runs on a node the autoscaler added
        assert most_nodes >= 2 and most_actors >= 2, (most_nodes, most_actors)
        assert read_catalog(str(out)).num_rows == 200000
        wait_for(lambda: c.nodes() == 1, 120, "the added nodes to idle out")
    finally:
        c.shutdown()
