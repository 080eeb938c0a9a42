"""The scan job end to end on a real local Ray, with real S3 (SeaweedFS) on both sides."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from taskray.core.storage import Store
from taskray.errors import BadInput
from taskray.scan import CATALOG_SCHEMA, Catalog, read_catalog, read_tasks, scan, scan_blobs, select
from taskray.scan.export import export
from taskray.scan.sources import list_shards
from taskray.scan.synth import EXPECTED_KIND, family_of, synth_corpus


def upload_folder(s3, local: Path, bucket: str, prefix: str) -> str:
    client = s3.client()
    for path in sorted(local.rglob("*.parquet")):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
    return f"s3://{bucket}/{prefix}"


def expected_catalog(corpus: Path) -> dict[tuple[str, str], dict]:
    """What the catalog must hold, computed in this process with the pure function, no Ray."""
    rows = {}
    for shard in list_shards(str(corpus)):
        t = pq.read_table(shard.url)
        cols = scan_blobs(shard.source, shard.url, 0, t["path"].to_pylist(), t["task_binary"].to_pylist())
        for i in range(t.num_rows):
            rows[(cols["source"][i], cols["path"][i])] = {
                k: cols[k][i] for k in ("verifier_kind", "blob_sha256", "error", "n_files")
            }
    return rows


def catalog_rows(url: str) -> dict[tuple[str, str], dict]:
    t = read_catalog(url).to_pylist()
    rows = {
        (r["source"], r["path"]): {k: r[k] for k in ("verifier_kind", "blob_sha256", "error", "n_files")}
        for r in t
    }
    assert len(rows) == len(t), "duplicate rows in the catalog"
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    synth_corpus(out, 1200, sources=3, seed=11, row_group_size=100)
    return out


def test_scan_s3_to_s3_on_ray(ray_local, s3, bucket, corpus, tmp_path):
    source = upload_folder(s3, corpus, bucket, "tasktrove")
    out = f"s3://{bucket}/scan-out"
    result = scan(source, out, rows_per_piece=250)
    assert result.pieces == 6 and result.skipped_pieces == 0 and result.rows_scanned == 1200

    assert catalog_rows(out) == {(s, p): v for (s, p), v in expected_catalog(corpus).items()}
    table = read_catalog(out)
    assert table.schema.names == CATALOG_SCHEMA.names
    for row in table.to_pylist():
        assert row["shard"].startswith(f"s3://{bucket}/tasktrove/")
        kind = EXPECTED_KIND[family_of(row["path"])]
        assert (row["error"] is not None) == (kind == "error")
        assert row["verifier_kind"] == (kind if kind not in (None, "error") else "none")

    store = Store(out)
    summary = json.loads(store.read_bytes("summary.json"))
    assert summary["total"]["n"] == 1200
    assert set(summary["sources"]) == {"synth__source-0", "synth__source-1", "synth__source-2"}
    assert summary["total"]["verified"] == sum(1 for r in table.to_pylist() if r["has_verifier"])
    html = store.read_bytes("report.html").decode()
    for png in ("top_sources.png", "size_histogram.png", "verifier_rate.png", "verifier_kinds.png"):
        assert f"plots/{png}" in html and store.read_bytes(f"plots/{png}")[:4] == b"\x89PNG"

    # a rerun finds everything done and rewrites nothing
    again = scan(source, out, rows_per_piece=250)
    assert again.skipped_pieces == 6 and again.rows_scanned == 0

    # export straight from S3 to S3, TaskTrove format: blobs come back byte-identical
    exported = f"s3://{bucket}/verified"
    export(out, exported, ["has_verifier"], fmt="tasktrove")
    shards = list_shards(exported)
    assert {s.source for s in shards} == set(summary["sources"])
    verified = {r["blob_sha256"] for r in table.to_pylist() if r["has_verifier"]}
    local = tmp_path / "exported"
    for s in shards:
        key = s.url.removeprefix(f"s3://{bucket}/")
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        s3.client().download_file(bucket, key, str(local / key))
    blobs = [b for f in local.rglob("*.parquet") for b in pq.read_table(f)["task_binary"].to_pylist()]
    assert {hashlib.sha256(b).hexdigest() for b in blobs} == verified and len(blobs) == summary["total"][
        "verified"
    ]


def test_scan_with_wrong_credentials_is_bad_input(ray_local, s3, bucket, corpus, monkeypatch):
    source = upload_folder(s3, corpus, bucket, "src")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    never = Path("/tmp") / f"never-{bucket}"
    with pytest.raises(BadInput, match="access denied .* credentials"):
        scan(source, str(never))
    assert not never.exists()


def test_kill_half_way_then_resume_equals_clean_run(ray_local, corpus, tmp_path):
    clean = tmp_path / "clean"
    scan(str(corpus), str(clean), rows_per_piece=100, report=False)

    crashed = tmp_path / "crashed"
    cmd = [
        sys.executable,
        "-m",
        "taskray.cli",
        "scan",
        str(corpus),
        "--out",
        str(crashed),
        "--rows-per-piece",
        "100",
        "--num-cpus",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while len(list((crashed / "_progress").glob("*.json"))) < 3:  # pieces stored and recorded
            assert proc.poll() is None, "the scan finished before it could be killed"
            assert time.monotonic() < deadline, "the scan made no progress"
            time.sleep(0.05)
        family = psutil.Process(proc.pid).children(recursive=True)  # Ray's processes, its agents
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        proc.wait()
        # nothing of that run lingers: Ray's own processes and its agents are gone within seconds
        gone, alive = psutil.wait_procs(family, timeout=15)
        assert alive == [], [p.name() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finished = len(list((crashed / "_progress").glob("*.json")))
    assert 3 <= finished < 12, finished
    assert not (crashed / "summary.json").exists()

    resumed = scan(str(corpus), str(crashed), rows_per_piece=100)
    assert resumed.skipped_pieces == finished and resumed.pieces == 12
    assert catalog_rows(str(crashed)) == catalog_rows(str(clean))
    assert read_catalog(str(crashed)).num_rows == 1200
    assert not list(crashed.glob(".tmp-*"))


def test_rerun_with_other_inputs_is_refused(ray_local, corpus, tmp_path):
    out = str(tmp_path / "out")
    scan(str(corpus), out, limit=150, rows_per_piece=100, report=False)
    assert read_catalog(out).num_rows == 150
    with pytest.raises(BadInput, match="other inputs"):
        scan(str(corpus), out, limit=300, rows_per_piece=100)
    assert read_catalog(out).num_rows == 150  # nothing written was lost


def test_source_filter_and_bad_sources(ray_local, corpus, tmp_path):
    out = str(tmp_path / "filtered")
    scan(str(corpus), out, source_filter="source-[12]$", rows_per_piece=1000)
    assert set(read_catalog(out)["source"].to_pylist()) == {"synth__source-1", "synth__source-2"}
    with pytest.raises(BadInput, match="no parquet shards"):
        list_shards(str(corpus), "nothing-matches")
    with pytest.raises(BadInput, match="no such folder"):
        list_shards(str(tmp_path / "missing" / "dir"))


def test_hub_ids_map_to_hf_paths():
    from taskray.scan.sources import normalise_source

    assert normalise_source("open-thoughts/TaskTrove") == "hf://datasets/open-thoughts/TaskTrove"
    assert normalise_source("open-thoughts/TaskTrove@refs/convert/parquet").startswith("hf://datasets/")
    assert (
        normalise_source("hf://datasets/open-thoughts/TaskTrove@main")
        == "hf://datasets/open-thoughts/TaskTrove@main"
    )


def test_synth_is_the_same_bytes_serial_or_in_parallel(tmp_path):
    serial = synth_corpus(tmp_path / "serial", 300, sources=2, seed=5, profile="tasktrove")
    parallel = synth_corpus(
        tmp_path / "parallel", 300, sources=2, seed=5, profile="tasktrove", parallel_from=0
    )
    again = synth_corpus(tmp_path / "again", 300, sources=2, seed=6, profile="tasktrove")
    assert [p.read_bytes() for p in serial] == [p.read_bytes() for p in parallel]
    assert [p.read_bytes() for p in serial] != [p.read_bytes() for p in again]  # the seed matters


def test_cli_reports_bad_input(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "taskray.cli", *a], capture_output=True, text=True)  # noqa: E731
    missing = run("scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope" in missing.stderr and "no such folder" in missing.stderr
    bad_regex = run("scan", str(tmp_path), "--source-filter", "(", "--out", str(tmp_path / "o"))
    assert bad_regex.returncode != 0 and "not a regex" in bad_regex.stderr
    bad_where = run("export", str(tmp_path), str(tmp_path / "e"), "--where", "nonsense")
    assert bad_where.returncode == 2 and "taskray export" in bad_where.stderr


def test_export_harbor_is_safe_and_complete(ray_local, corpus, tmp_path):
    out = str(tmp_path / "scan")
    scan(str(corpus), out, rows_per_piece=1000)
    harbor = tmp_path / "harbor"
    manifest = export(out, str(harbor), ["verifier_kind=pytest"], fmt="harbor")
    pytest_rows = select(out, ["verifier_kind=pytest"])
    assert len(manifest["written"]) == pytest_rows.num_rows > 0
    for folder in manifest["written"]:
        task = harbor / folder
        assert (task / "tests" / "test.sh").is_file() and (task / "instruction.md").is_file()
    # the traversal family's attack members never reach the disk, links are never created
    everything = list(tmp_path.rglob("*"))
    assert not any(p.name in ("escape.sh", "evil", "link-to-passwd", "hard", "sda") for p in everything)
    assert not any(p.is_symlink() for p in everything)
    assert not (tmp_path.parent / "escape.sh").exists()
    # re-scanning the exported folders' tasks finds the same kinds
    assert json.loads((harbor / "export.json").read_text())["tasks"] == pytest_rows.num_rows


def test_library_view_and_read_tasks(ray_local, corpus, tmp_path):
    out = str(tmp_path / "scan")
    scan(str(corpus), out, rows_per_piece=1000)
    cat = Catalog(out)
    assert cat.summary()["total"]["n"] == 1200
    rows = cat.sample(4, source="synth__source-2", where=["has_verifier"], seed=5)
    assert len(rows) == 4 and all(r["source"] == "synth__source-2" and r["has_verifier"] for r in rows)
    assert all(r["instruction"] for r in rows)
    assert rows == cat.sample(4, source="synth__source-2", where=["has_verifier"], seed=5)
    from_catalog = list(read_tasks(out))
    from_shards = list(read_tasks(str(corpus)))
    assert [(t["source"], t["path"], t["instruction"]) for t in from_catalog] == [
        (t["source"], t["path"], t["instruction"]) for t in from_shards
    ]
    assert all(t["has_verifier"] for t in from_shards)


def test_ray_job_submit_against_a_running_head(corpus, tmp_path):
    """The `ray job submit` entrypoint, on a real head started with `ray start`."""
    import shutil
    import socket
    import tempfile

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    root = Path(__file__).resolve().parents[1]
    temp_dir = tempfile.mkdtemp(prefix="tr-head-", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    # Every port on its own: another Ray on this machine (the session's local one) holds the defaults,
    # and a head whose dashboard agent cannot bind accepts no jobs.
    ports = [
        f"--port={free_port()}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            *ports,
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            "--include-dashboard=true",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = tmp_path / "job-out"
    submit_cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        f"http://127.0.0.1:{dashboard_port}",
        "--working-dir",
        str(root),
        "--",
        "python",
        "jobs/scan.py",
        str(corpus),
        "--out",
        str(out),
    ]
    try:
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds to accept jobs; retry only while it is not ready
            submit = subprocess.run(submit_cmd, env=env, capture_output=True, text=True, timeout=300)
            text = submit.stdout + submit.stderr
            not_ready = (
                "Failed to connect" in text or "No available agent" in text or "Connection refused" in text
            )
            if submit.returncode == 0 or not not_ready or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert submit.returncode == 0, text[-3000:]
        assert "scanned 1,200 tasks" in submit.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert read_catalog(str(out)).num_rows == 1200
    assert json.loads((out / "summary.json").read_text())["total"]["n"] == 1200


def test_shards_with_the_same_name_in_different_folders_do_not_collide(ray_local, tmp_path):
    """The Hub's parquet conversions look like default/train/0000.parquet and default/test/0000.parquet."""
    src = tmp_path / "hub-layout"
    for split in ("train", "test"):
        synth_corpus(tmp_path / f"gen-{split}", 30, sources=1, seed=len(split))
        (src / "default" / split).mkdir(parents=True)
        (tmp_path / f"gen-{split}" / "synth__source-0" / "tasks.parquet").rename(
            src / "default" / split / "0000.parquet"
        )
    out = tmp_path / "out"
    scan(str(src), str(out), report=False)
    files = sorted(p.relative_to(out).as_posix() for p in (out / "catalog").rglob("*.parquet"))
    assert files == [
        "catalog/default/test/0000.0000000000-0000000030.parquet",
        "catalog/default/train/0000.0000000000-0000000030.parquet",
    ]
    assert read_catalog(str(out)).num_rows == 60


def test_unfinished_scan_is_not_read_as_a_catalog(ray_local, corpus, tmp_path):
    out = tmp_path / "partial"
    scan(str(corpus), str(out), limit=100, rows_per_piece=100, report=False)  # no summary.json: unfinished
    with pytest.raises(ValueError, match="unfinished"):
        next(read_tasks(str(out)))


def corpus_digests(corpus: Path) -> dict[tuple[str, int], str]:
    """(shard url, row) -> sha256 of the blob there now."""
    out = {}
    for shard in list_shards(str(corpus)):
        for row, blob in enumerate(pq.read_table(shard.url)["task_binary"].to_pylist()):
            out[(shard.url, row)] = hashlib.sha256(blob).hexdigest()
    return out


def test_changed_inputs_are_refused_or_rescanned_never_mixed(ray_local, tmp_path):
    corpus, out = tmp_path / "c", str(tmp_path / "o")
    synth_corpus(corpus, 400, sources=2, seed=1)
    scan(str(corpus), out)
    for shard in corpus.iterdir():  # the same paths, other contents
        for f in shard.iterdir():
            f.unlink()
    synth_corpus(corpus, 400, sources=2, seed=7)
    before = catalog_rows(out)
    with pytest.raises(BadInput, match=r"synth__source-0/tasks.parquet changed .* --rescan"):
        scan(str(corpus), out)
    assert catalog_rows(out) == before and (Path(out) / "summary.json").exists()  # nothing lost

    # only one file changes back: --rescan redoes that file's pieces, nothing else is stale
    result = scan(str(corpus), out, rescan=True)
    assert result.skipped_pieces == 0 and result.rows_scanned == 400
    now = corpus_digests(corpus)
    rows = read_catalog(out).to_pylist()
    assert len(rows) == 400 and all(r["blob_sha256"] == now[(r["shard"], r["row"])] for r in rows)
    assert scan(str(corpus), out).skipped_pieces == 2  # and then it is a finished scan of these inputs


def test_null_blobs_and_paths_are_error_rows(ray_local, tmp_path):
    import random

    import pyarrow as pa

    from taskray.scan.synth import make_blob

    good = make_blob("pytest", 0, random.Random(0))
    src = tmp_path / "src" / "org__nulls"
    src.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"path": ["ok", "no-blob", None], "task_binary": [good, None, good]},
            schema=pa.schema([("path", pa.string()), ("task_binary", pa.binary())]),
        ),
        src / "tasks.parquet",
    )
    out = str(tmp_path / "o")
    scan(str(src.parent), out)
    rows = {r["row"]: r for r in read_catalog(out).to_pylist()}
    assert rows[0]["error"] is None and rows[0]["has_verifier"]
    assert (
        rows[1]["error"] == "task_binary is null"
        and not rows[1]["has_verifier"]
        and rows[1]["blob_sha256"] is None
    )
    assert rows[2]["error"] == "path is null" and not rows[2]["has_verifier"]
    manifest = export(out, str(tmp_path / "all"), ["!has_verifier"])  # null rows selected on purpose
    assert len(manifest["written"]) + len(manifest["failed"]) == 2


def test_exports_keep_exec_bits_and_reports_are_readable(ray_local, tmp_path):
    import io
    import tarfile

    import pyarrow as pa

    def member(tf, name, data: bytes, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tf.addfile(info, io.BytesIO(data))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        member(tf, "task.toml", b'version = "1.0"\n', 0o644)
        member(tf, "instruction.md", b"Do it.\n", 0o600)
        member(tf, "environment/Dockerfile", b"FROM ubuntu:24.04\n", 0o664)  # group-writable in the tar
        member(tf, "tests/test.sh", b"#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n", 0o755)
        member(tf, "solution/solve.sh", b"#!/bin/bash\ntrue\n", 0o4777)  # setuid, world-writable
    src = tmp_path / "src" / "org__modes"
    src.mkdir(parents=True)
    pq.write_table(pa.table({"path": ["t"], "task_binary": [buf.getvalue()]}), src / "tasks.parquet")
    out = tmp_path / "o"
    old_umask = os.umask(0o022)
    try:
        scan(str(src.parent), str(out))
        export(str(out), str(tmp_path / "h"), ["has_verifier"])
    finally:
        os.umask(old_umask)
    task = tmp_path / "h" / "org__modes" / "t-0"
    modes = {str(p.relative_to(task)): p.stat().st_mode & 0o7777 for p in task.rglob("*") if p.is_file()}
    assert modes == {
        "task.toml": 0o644,
        "instruction.md": 0o644,
        "environment/Dockerfile": 0o644,
        "tests/test.sh": 0o755,
        "solution/solve.sh": 0o755,
    }
    for name in ("summary.json", "report.html", "plan.json", "plots/top_sources.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_synth_is_the_same_bytes_whenever_it_runs(tmp_path, monkeypatch):
    first = synth_corpus(tmp_path / "a", 300, sources=1, seed=2)
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)  # years later: zip dates must not move
    second = synth_corpus(tmp_path / "b", 300, sources=1, seed=2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_a_scan_in_out_keeps_its_piece_size(ray_local, tmp_path):
    """Pieces are sized by the corpus, but a scan already in OUT keeps the size it began with: a rerun
    (or --rescan after the corpus grew) finds its pieces, instead of refusing OUT as another scan's."""
    corpus, out = tmp_path / "c", str(tmp_path / "o")
    synth_corpus(corpus, 400, sources=2, seed=1)
    first = scan(str(corpus), out, rows_per_piece=100)
    again = scan(str(corpus), out)  # no size given: the one in OUT, not the one for 400 tasks
    assert again.pieces == first.pieces == again.skipped_pieces
