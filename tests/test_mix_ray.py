"""`taskray mix` end to end on a real local Ray: byte-identical shards at 1 and 2 CPUs, resuming, and an
export to a real S3 server that goes down mid-export.

A 1-CPU Ray needs its own process (`taskray mix ... --num-cpus 1`); the 2-CPU runs use the session's Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from taskray.errors import BadInput
from taskray.mix.job import mix
from taskray.mix.spec import load_spec
from taskray.mix.split import build_split, render_rows


def taskray_mix(spec: Path, out: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in its own process: its own Ray, sized by --num-cpus."""
    cmd = [sys.executable, "-m", "taskray.cli", "mix", str(spec), "--out", out, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def write_spec(tmp_path: Path, shared_data: Path, **over) -> Path:
    convs = tmp_path / "identity.jsonl"
    convs.write_text(
        "".join(
            json.dumps(
                [
                    {"role": "user", "content": f"who are you {i}?"},
                    {"role": "assistant", "content": f"taskray {i}"},
                ]
            )
            + "\n"
            for i in range(40)
        )
    )
    spec = {
        "name": "test-mix",
        "seed": 0,
        "rows_per_shard": 250,
        "rollouts_per_example": 4,
        "splits": {
            "train": [
                {
                    "task": "arc",
                    "args": {
                        "subset": "ARC-Challenge",
                        "split": "validation",
                        "path": str(shared_data / "arc"),
                    },
                    "repeat": 2,
                },
                {
                    "task": "gsm8k",
                    "slice": {"stop": 400},
                    "args": {"subset": "main", "split": "test", "path": str(shared_data / "gsm8k")},
                },
                {"task": "spellingbee", "args": {"size": 300}, "weight": 0.5},
                {
                    "task": "customjson",
                    "args": {"filepath": "identity.jsonl"},
                    "system_prompt": "Be taskray.",
                },
            ],
            "eval": {
                "mode": "sequence",
                "tasks": [
                    {
                        "task": "mmlu",
                        "args": {"subset": "all", "split": "dev", "path": str(shared_data / "mmlu")},
                        "few_shot": 1,
                    },
                ],
            },
        },
    }
    spec.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def shard_hashes(out: Path) -> dict[str, str]:
    files = sorted((out / "data").glob("*.parquet"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_shards_at_one_and_two_cpus_and_resume(tmp_path, shared_data, ray_local, capsys):
    import datasets

    spec = write_spec(tmp_path, shared_data)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = taskray_mix(spec, str(one), "--num-cpus", "1")
    assert r1.returncode == 0, r1.stderr
    assert "rendering on Ray with 1 CPUs" in r1.stderr
    assert "shards" in r1.stderr and "rows/s" in r1.stderr  # progress
    assert ray_local.cluster_resources()["CPU"] == 2
    mix(load_spec(spec), str(two))

    hashes = shard_hashes(one)
    assert hashes == shard_hashes(two) and len(hashes) > 3
    assert (one / "manifest.json").read_bytes() == (two / "manifest.json").read_bytes()
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["rollouts_per_example"] == 4
    assert manifest["splits"]["train"]["rows_per_task"] == {
        "arc": 598,
        "gsm8k": 400,
        "spellingbee": 150,
        "customjson": 40,
    }
    assert manifest["splits"]["eval"]["rows"] == 285
    listed = {s["path"].split("/")[-1]: s for split in manifest["splits"].values() for s in split["shards"]}
    assert {n: s["sha256"] for n, s in listed.items()} == hashes
    inputs = {i["task"]: i["source"] for i in manifest["inputs"]["train"]}
    assert inputs["customjson"]["files"] == {
        "identity.jsonl": hashlib.sha256((tmp_path / "identity.jsonl").read_bytes()).hexdigest()
    }

    # the shards load as they are, and hold every row of the plan exactly once
    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": str(one / "data/train-*.parquet"), "eval": str(one / "data/eval-*.parquet")},
    )
    assert ds["train"].num_rows == 1188 and ds["eval"].num_rows == 285
    assert sorted(ds["train"]["example_id"]) == list(range(1188))
    assert ds["eval"]["example_id"] == list(range(285))  # a sequence keeps the tasks' order
    identity = [r for r in ds["train"] if r["task"] == "customjson"]
    assert all(r["prompt"][0] == {"role": "system", "content": "Be taskray."} for r in identity)

    # a finished export is left alone; another spec may not overwrite it
    capsys.readouterr()
    assert mix(load_spec(spec), str(one)) == manifest
    assert "nothing to do" in capsys.readouterr().err
    with pytest.raises(BadInput, match="already holds a different export"):
        mix(load_spec(spec, seed=1), str(one))

    # a crash: shards and receipts partly gone, no manifest. The rerun redoes only what is missing.
    (one / "manifest.json").unlink()
    for name in sorted(hashes)[:2]:
        (one / "data" / name).unlink()
        (one / "_progress" / f"data__{name}.json").unlink()  # the runner's receipt of that shard
    mix(load_spec(spec), str(one))
    assert "2 to go" in capsys.readouterr().err
    assert shard_hashes(one) == hashes

    # another seed: other bytes, other order, the very same rows
    seeded = tmp_path / "seeded"
    mix(load_spec(spec, seed=1), str(seeded))
    assert shard_hashes(seeded).keys() == hashes.keys() and shard_hashes(seeded) != hashes
    shuffled = datasets.load_dataset("parquet", data_files=str(seeded / "data/train-*.parquet"))["train"]
    assert shuffled["example_id"] != ds["train"]["example_id"]
    by_id = lambda r: r["example_id"]  # noqa: E731
    assert sorted(shuffled, key=by_id) == sorted(ds["train"], key=by_id)


def test_s3_export_survives_an_outage(s3, bucket, tmp_path, shared_data, ray_local, capsys):
    spec = write_spec(
        tmp_path,
        shared_data,
        rows_per_shard=60,
        splits={
            "train": [
                {"task": "spellingbee", "args": {"size": 3000}},
                {
                    "task": "gsm8k",
                    "args": {"subset": "main", "split": "test", "path": str(shared_data / "gsm8k")},
                },
            ]
        },
    )
    out = f"s3://{bucket}/mixes/run1"
    client = s3.client()

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"mixes/run1/{prefix}")
        return sorted(o["Key"].removeprefix("mixes/run1/") for p in pages for o in p.get("Contents", []))

    cmd = [
        sys.executable,
        "-m",
        "taskray.cli",
        "mix",
        str(spec),
        "--out",
        out,
        "--num-cpus",
        "1",
        "--multipart-mb",
        "0.01",
    ]
    # storage calls wait out a short outage (TASKRAY_STORAGE_RETRY_SECONDS, default 120 s); give up
    # quickly here so the job really fails while the server is down
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "2", "TASKRAY_STORAGE_RETRY_SECONDS": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not keys("_progress/") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    s3.stop()  # the server dies mid-export
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        s3.start()
    assert proc.returncode == 1, err
    assert "the run failed" in err and "rerun the same command" in err and "Traceback" not in err
    assert "manifest.json" not in keys("")
    stored = len(keys("_progress/"))
    total = -(-(3000 + 1319) // 60)
    assert 1 <= stored < total

    capsys.readouterr()
    mix(load_spec(spec), out, multipart_mb=0.01)  # on the session's 2-CPU Ray
    assert f"resuming: {stored} shards already stored" in capsys.readouterr().err

    manifest = json.loads(client.get_object(Bucket=bucket, Key="mixes/run1/manifest.json")["Body"].read())
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == total and sum(s["rows"] for s in shards) == 4319
    assert keys("data/") == sorted(s["path"] for s in shards)  # nothing duplicated, nothing left over
    # multipart uploads leave an ETag "<md5>-<parts>"
    assert "-" in client.head_object(Bucket=bucket, Key=f"mixes/run1/{shards[0]['path']}")["ETag"]

    # every row is there, exactly as rendered in this process
    plan = build_split("train", load_spec(spec).splits["train"], 0)
    expected = render_rows(plan, 0, len(plan))
    got = []
    for s in shards:
        data = client.get_object(Bucket=bucket, Key=f"mixes/run1/{s['path']}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == s["rows"]
        got += table.to_pylist()
    assert got == expected
