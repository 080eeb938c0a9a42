"""Every wrong input a new user tries gets exit 2 and one line naming it; a failure during work exit 1
and one line; never a traceback, never a half-written or lost output. Each case runs the real command
line in its own process, as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taskray.scan import scan
from taskray.scan.synth import synth_corpus

ROOT = Path(__file__).resolve().parents[1]


def taskray(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-m", "taskray", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=run_env, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process exited `code` with exactly one line on stderr that holds every needle."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    synth_corpus(folder, 200, sources=2, seed=3)
    return folder


@pytest.fixture(scope="module")
def finished_scan(ray_local, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scan") / "out"
    scan(str(corpus), str(out))
    return out


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# -- scan: wrong inputs are found before Ray starts ----------------------------------------------------
def test_scan_arguments(tmp_path, corpus):
    one_line(taskray("scan", tmp_path / "nope", cwd=tmp_path), 2, "nope", "no such folder")
    one_line(taskray("scan", corpus, "--num-cpus", "0", cwd=tmp_path), 2, "--num-cpus", ">= 1")
    one_line(taskray("scan", corpus, "--limit", "0", cwd=tmp_path), 2, "--limit")
    one_line(
        taskray("scan", corpus, "--source-filter", "(", cwd=tmp_path), 2, "--source-filter", "not a regex"
    )
    one_line(taskray("scan", corpus, "--bogus", cwd=tmp_path), 2, "--bogus")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    one_line(taskray("scan", corpus, "--out", a_file, cwd=tmp_path), 2, "a-file", "is a file")
    one_line(taskray("scan", corpus, "--out", a_file / "sub", cwd=tmp_path), 2, "is a file")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing else was written


@pytest.mark.parametrize(
    "table,needles",
    [
        (
            pa.table({"name": ["a"], "blob": [b"x"]}),
            ["no column 'path'", "no column 'task_binary'", "path: string"],
        ),
        (pa.table({"path": ["a"], "task_binary": ["text, not bytes"]}), ["task_binary is string", "binary"]),
        (pa.table({"path": [1], "task_binary": [b"x"]}), ["path is int64"]),
    ],
)
def test_scan_checks_every_shard_against_the_tasktrove_schema(tmp_path, table, needles):
    src = tmp_path / "src"
    write_parquet(src / "good__source" / "tasks.parquet", pa.table({"path": ["a"], "task_binary": [b"x"]}))
    bad = write_parquet(src / "bad__source" / "tasks.parquet", table)
    one_line(taskray("scan", src, "--out", tmp_path / "out", cwd=tmp_path), 2, str(bad), *needles)
    assert not (tmp_path / "out").exists()


def test_scan_of_files_that_are_not_parquet(tmp_path):
    src = tmp_path / "src" / "x__y"
    src.mkdir(parents=True)
    (src / "tasks.parquet").write_bytes(b"")
    one_line(
        taskray("scan", src.parent, "--out", tmp_path / "o", cwd=tmp_path),
        2,
        "tasks.parquet",
        "not a readable parquet",
    )
    (src / "tasks.parquet").write_bytes(b"PAR1 but not really a parquet file at all")
    one_line(taskray("scan", src.parent, "--out", tmp_path / "o", cwd=tmp_path), 2, "not a readable parquet")


def test_scan_of_the_hub_when_offline_is_one_line(tmp_path):
    proc = taskray(
        "scan", "open-thoughts/TaskTrove", "--out", tmp_path / "o", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}
    )
    one_line(proc, 1, "open-thoughts/TaskTrove", "Hugging Face Hub")


# -- export ---------------------------------------------------------------------------------------------
def test_export_refuses_what_is_not_a_finished_scan(tmp_path, finished_scan):
    one_line(
        taskray("export", tmp_path / "nothing", tmp_path / "o", cwd=tmp_path), 2, "nothing", "not a scan"
    )
    unfinished = tmp_path / "unfinished"
    for name in ("plan.json", "catalog"):
        src = finished_scan / name
        (unfinished / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(unfinished / name)], check=True)
        else:
            (unfinished / name).write_bytes(src.read_bytes())
    one_line(taskray("export", unfinished, tmp_path / "o", cwd=tmp_path), 2, "unfinished", "summary.json")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "where,needles",
    [
        ("has_verifier==", ["has_verifier=="]),
        ("cpus>abc", ["'abc'", "number"]),
        ("has_verifier=maybe", ["true or false"]),
        ("verifier_signals=x", ["list"]),
        ("no_such_column", ["catalog column"]),
        ("verifier_kind", ["not true/false"]),
    ],
)
def test_export_malformed_where(tmp_path, finished_scan, where, needles):
    out = tmp_path / "o"
    one_line(taskray("export", finished_scan, out, "--where", where, cwd=tmp_path), 2, "--where", *needles)
    assert not out.exists()


def test_export_warns_on_a_where_that_matches_nothing(tmp_path, finished_scan):
    out = tmp_path / "o"
    proc = taskray(
        "export", finished_scan, out, "--where", "verifier_kind=pytset", "--num-cpus", "1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "no task matches verifier_kind=pytset" in proc.stderr and "exported 0 tasks" in proc.stdout
    assert json.loads((out / "export.json").read_text())["tasks"] == 0


def test_export_into_a_folder_holding_something_else(tmp_path, finished_scan):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    one_line(taskray("export", finished_scan, out, cwd=tmp_path), 2, "not empty", "--overwrite")
    assert tree_digest(out) == {"mine.txt": hashlib.sha256(b"precious").hexdigest()}  # nothing lost

    first = taskray(
        "export",
        finished_scan,
        out,
        "--overwrite",
        "--where",
        "verifier_kind=pytest",
        "--num-cpus",
        "1",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    before = tree_digest(out)
    assert "mine.txt" not in before and before["export.json"]
    # another selection into the same folder: refused, never a union of the two on disk
    one_line(taskray("export", finished_scan, out, "--where", "has_oracle", cwd=tmp_path), 2, "different run")
    assert tree_digest(out) == before


# -- eval, mix, synth -----------------------------------------------------------------------------------
def test_eval_arguments(tmp_path, shared_data):
    he = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    base = ["eval", "--problems", f"humaneval:{he}", "--self-check", "--out", tmp_path / "o"]
    one_line(taskray(*base, "--timeout", "nan", cwd=tmp_path), 2, "--timeout nan")
    one_line(taskray(*base, "--timeout", "inf", cwd=tmp_path), 2, "--timeout inf")
    one_line(taskray(*base, "--workers", "0", cwd=tmp_path), 2, "--workers 0")
    one_line(taskray(*base, "--num-cpus", "0", cwd=tmp_path), 2, "--num-cpus")
    one_line(
        taskray("eval", "--problems", "humaneval:nope.jsonl", "--self-check", cwd=tmp_path), 2, "nope.jsonl"
    )
    no_docker = taskray(*base, cwd=tmp_path, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    one_line(no_docker, 1, "cannot reach the Docker daemon")
    assert not (tmp_path / "o").exists()


def test_mix_arguments(tmp_path, finished_scan):
    one_line(taskray("mix", tmp_path / "nope.yaml", "--out", tmp_path / "o", cwd=tmp_path), 2, "nope.yaml")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps({"splits": {"train": [{"task": "tasktrove", "args": {"url": str(finished_scan)}}]}})
    )
    one_line(taskray("mix", spec, "--out", tmp_path / "o", cwd=tmp_path), 2, "tasktrove", "url")
    spec.write_text(json.dumps({"splits": {"train": [{"task": "spellingbee", "args": {"size": 10}}]}}))
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    one_line(taskray("mix", spec, "--out", a_file, cwd=tmp_path), 2, "is a file")
    one_line(taskray("mix", spec, "--out", tmp_path / "o", "--num-cpus", "0", cwd=tmp_path), 2, "--num-cpus")
    assert a_file.read_text() == "keep me" and not (tmp_path / "o").exists()


def test_synth_arguments(tmp_path):
    one_line(taskray("synth", tmp_path / "c", "--sources", "0", cwd=tmp_path), 2, "--sources")


def test_verify_arguments(tmp_path, finished_scan):
    one_line(
        taskray("verify", tmp_path / "nope", "--out", tmp_path / "o", cwd=tmp_path), 2, "nope", "not a scan"
    )
    one_line(
        taskray("verify", finished_scan, "--base-map", "ubuntu", cwd=tmp_path), 2, "--base-map", "FROM_IMAGE="
    )
    one_line(taskray("verify", finished_scan, "--network", "lan", cwd=tmp_path), 2, "--network")
    one_line(taskray("verify", finished_scan, "--where", "cpus>x", cwd=tmp_path), 2, "--where")
    assert not (tmp_path / "o").exists()
