"""Verified agent tasks from TaskTrove: a scan catalog (`taskray scan` output) or a TaskTrove-format
folder (`<org>__<name>/tasks.parquet`).

Each task becomes a one-message conversation, its instruction as the user message; there is no reference
answer (a task's own verifier grades it in its environment), so everything an RL environment needs to find
and run that verifier (source, path, verifier kind, ...) goes in the conversation's metadata, i.e. `info`.
"""

from __future__ import annotations

import hashlib
import json

from taskray.tasks.common import Task


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


class TaskTrove(Task):
    name = "tasktrove"
    eval_type = "generative"

    def __init__(self, path: str, source_filter: str | None = None, verified_only: bool = True, **kwargs):
        super().__init__(**kwargs)
        from taskray.scan.catalog import read_tasks

        rows = []
        for task in read_tasks(path, verified_only=verified_only, source_filter=source_filter):
            if not isinstance(task.get("instruction"), str) or not task["instruction"].strip():
                raise ValueError(f"{path}: task {task.get('source')}/{task.get('path')} has no instruction")
            rows.append({k: v for k, v in task.items() if _plain(v)})
        # catalogs list tasks in no promised order: sort, so row i is the same task on every run
        self.rows = sorted(rows, key=lambda r: (str(r.get("source")), str(r.get("path"))))
        digest = hashlib.sha256(json.dumps(self.rows, sort_keys=True, default=str).encode()).hexdigest()
        self.source = {
            "tasktrove": path,
            "source_filter": source_filter,
            "verified_only": verified_only,
            "tasks": len(self.rows),
            "sha256": digest,
        }

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        meta = {k: v for k, v in row.items() if k != "instruction"}
        return {"messages": [{"role": "user", "content": row["instruction"]}], **meta}
