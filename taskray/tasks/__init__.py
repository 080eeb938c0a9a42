"""Tasks: datasets of conversations with nanochat's Task API, one short file per dataset.

`TASKS` maps the names a mixture spec uses to the classes; modules load lazily so that building a
SpellingBee never imports `datasets`.
"""

from __future__ import annotations

import importlib

from taskray.tasks.common import Task, TaskMixture, TaskSequence, render_mc

TASKS = {
    "arc": "taskray.tasks.arc:ARC",
    "mmlu": "taskray.tasks.mmlu:MMLU",
    "gsm8k": "taskray.tasks.gsm8k:GSM8K",
    "humaneval": "taskray.tasks.humaneval:HumanEval",
    "smoltalk": "taskray.tasks.smoltalk:SmolTalk",
    "spellingbee": "taskray.tasks.spellingbee:SpellingBee",
    "simplespelling": "taskray.tasks.spellingbee:SimpleSpelling",
    "customjson": "taskray.tasks.customjson:CustomJSON",
    "tasktrove": "taskray.tasks.tasktrove:TaskTrove",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TASKS", "Task", "TaskMixture", "TaskSequence", "render_mc", "task_class"]
