"""The TaskTrove task on real Harbor tasks, packed the way TaskTrove ships them."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from taskray.mix.spec import Entry
from taskray.mix.split import make_row
from taskray.tasks.tasktrove import TaskTrove


def pack(folder) -> bytes:
    """A gzip-compressed tar of one Harbor task folder: one row's `task_binary`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                tar.add(f, arcname="./" + str(f.relative_to(folder)))
    return buf.getvalue()


def test_tasktrove_folder_gives_instructions_and_metadata(shared_data, tmp_path):
    harbor = sorted(p for p in (shared_data / "harbor-tasks").iterdir() if p.is_dir())
    source = tmp_path / "corpus" / "test-org__terminal-bench"
    source.mkdir(parents=True)
    table = pa.table(
        {"path": [p.name for p in harbor], "task_binary": [pack(p) for p in harbor]},
        schema=pa.schema([("path", pa.string()), ("task_binary", pa.binary())]),
    )
    pq.write_table(table, source / "tasks.parquet")

    task = TaskTrove(str(tmp_path / "corpus"))
    everything = TaskTrove(str(tmp_path / "corpus"), verified_only=False)
    assert len(everything) == len(harbor)
    assert 1 <= len(task) <= len(harbor)  # only tasks whose verifier the detector recognises
    instructions = {p.name: (p / "instruction.md").read_text() for p in harbor}
    for i in range(len(task)):
        ex = task[i]
        assert ex["messages"] == [{"role": "user", "content": instructions[ex["path"]]}]
        assert ex["source"] == "test-org__terminal-bench" and ex["has_verifier"]
        assert ex["verifier_kind"]
        row = make_row(task, Entry("tasktrove", "tasktrove", {}), i, i)
        info = json.loads(row["info"])
        assert row["prompt"] == [{"role": "user", "content": instructions[ex["path"]]}]
        assert row["answer"] == "" and info["path"] == ex["path"]
        assert info["verifier_kind"] == ex["verifier_kind"]
    paths = [task[i]["path"] for i in range(len(task))]
    assert paths == sorted(paths)  # a stable order, whatever order the catalog lists them in


def test_legacy_task_yaml_that_is_not_a_mapping_gives_no_instruction(tmp_path):
    from taskray.scan.catalog import read_tasks

    def blob(task_yaml: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, text in {"task.yaml": task_yaml, "run-tests.sh": "pytest\n"}.items():
                info = tarfile.TarInfo(name)
                info.size = len(text)
                tar.addfile(info, io.BytesIO(text.encode()))
        return buf.getvalue()

    source = tmp_path / "org__legacy"
    source.mkdir()
    yamls = ["- a list\n", "instruction: 42\n", "instruction: |-\n  Do it.\n"]
    pq.write_table(
        pa.table({"path": ["a", "b", "c"], "task_binary": [blob(y) for y in yamls]}), source / "tasks.parquet"
    )
    rows = list(read_tasks(str(tmp_path), verified_only=False))
    assert [(r["path"], r["instruction"], r["error"]) for r in rows] == [
        ("a", "", None),
        ("b", "", None),
        ("c", "Do it.", None),
    ]
