"""`taskray synth --profile real`: a corpus built from the real Harbor tasks, shaped like TaskTrove."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from taskray.scan import blob as blob_module
from taskray.scan.detect import parse_and_detect


def synth(out: Path, harbor: Path, tasks: int = 2000) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "taskray", "synth", str(out), "--tasks", str(tasks)]
    return subprocess.run(
        [*cmd, "--profile", "real", "--tasks-from", str(harbor)], capture_output=True, text=True
    )


def rows(out: Path) -> list[tuple[str, bytes]]:
    found = []
    for shard in sorted(out.glob("*/tasks.parquet")):
        table = pq.read_table(shard)
        found += zip(table.column("path").to_pylist(), table.column("task_binary").to_pylist())
    return found


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> list[tuple[str, bytes]]:
    out = tmp_path_factory.mktemp("real")
    run = synth(out, shared_data / "harbor-tasks")
    assert run.returncode == 0, run.stderr
    return rows(out)


def test_real_tasks_varied_and_sized_like_tasktrove(corpus, shared_data):
    names = {p.name for p in (shared_data / "harbor-tasks").iterdir() if (p / "task.toml").exists()}
    assert len(corpus) == 2000 and {path.split("/")[1] for path, _ in corpus} == names
    compressed = sum(len(b) for _, b in corpus) / len(corpus)
    raw = sum(len(gzip.decompress(b)) for _, b in corpus) / len(corpus)
    assert 4500 < compressed < 5800, compressed  # TaskTrove: about 5 KB per task
    assert raw > 20000, raw
    assert len({hashlib.sha256(b).digest() for _, b in corpus}) == len(corpus)  # no two rows alike


def test_same_arguments_same_bytes(corpus, shared_data, tmp_path):
    run = synth(tmp_path / "again", shared_data / "harbor-tasks")
    assert run.returncode == 0, run.stderr
    assert rows(tmp_path / "again") == corpus


def test_real_tasks_are_detected_alike_by_the_c_and_the_python_walker(corpus, monkeypatch):
    """Every row is a verifier (its tests/test.sh runs pytest), and the C tar walker and the Python one
    give identical detections on all of them."""
    detected = [parse_and_detect(b)[1].as_row() for _, b in corpus]
    assert {d["verifier_kind"] for d in detected} == {"pytest"}
    if blob_module._tarwalk is None:
        pytest.skip("taskray._tarwalk is not built here: both would be the Python walker")
    monkeypatch.setattr(blob_module, "_tarwalk", None)
    assert [parse_and_detect(b)[1].as_row() for _, b in corpus] == detected


# The catalog rows of the 2,000-task real-profile corpus, as the detection rules gave them before any
# speed work (taskray/scan/detect.py at 71d350a~1, before the substring prefilters), which gives this very
# digest. Speed work must keep it; a deliberate change to a detection rule changes it, on purpose.
REAL_PROFILE_CATALOG = "a08205e6e6e7012bbb602b46dac1f7f6fb2e9500886f0c0ccfa498a4f7f54e30"


def test_speed_work_leaves_the_real_profile_catalog_as_it_was(corpus):
    detected = [parse_and_detect(b)[1].as_row() for _, b in corpus]
    digest = hashlib.sha256(json.dumps(detected, sort_keys=True).encode()).hexdigest()
    assert digest == REAL_PROFILE_CATALOG, detected[:3]


def test_the_real_profile_needs_its_folder(shared_data, tmp_path):
    for extra in ((), ("--tasks-from", str(shared_data / "humaneval"))):
        cmd = [sys.executable, "-m", "taskray", "synth", str(tmp_path / "x"), "--profile", "real", *extra]
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
