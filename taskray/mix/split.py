"""One split of a mixture: its tasks and index (`build_split`), and its rows rendered for export.

Rows have `example_id` (stable across seeds), `prompt` (chat messages: system, few-shot, question),
`answer` (the reference), `info` (JSON: everything else the conversation carries), `task`, plus
`messages`, the whole conversation for SFT. A message's `content` is always text; an assistant message
made of tool-call parts (GSM8K, SpellingBee) also keeps them in `parts`. Pure functions: the same spec
gives the same bytes on any machine.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taskray.errors import BadInput
from taskray.mix.spec import Entry, SplitSpec
from taskray.tasks import Task, task_class
from taskray.tasks.common import content_text
from taskray.tasks.mixture import MixtureIndex, mixture_index

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PART = pa.struct([("type", pa.string()), ("text", pa.string())])
FULL_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("parts", pa.list_(PART))])
SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("prompt", pa.list_(MESSAGE)),
        ("answer", pa.string()),
        ("info", pa.string()),
        ("task", pa.string()),
        ("messages", pa.list_(FULL_MESSAGE)),
    ]
)


@dataclass
class SplitPlan:
    name: str
    entries: list[Entry]
    tasks: list[Task]  # one per entry; entries listing the same task share the object
    index: MixtureIndex

    def __len__(self) -> int:
        return len(self.index)

    def rows_per_task(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e, c in zip(self.entries, self.index.components):
            out[e.name] = out.get(e.name, 0) + c.count
        return out


def build_split(name: str, split: SplitSpec, seed: int) -> SplitPlan:
    built: dict[str, Task] = {}
    tasks = []
    for i, e in enumerate(split.entries):
        key = json.dumps([e.task, e.args, e.slice], sort_keys=True)
        if key not in built:
            start, stop, step = e.slice
            try:
                built[key] = task_class(e.task)(**e.args, start=start, stop=stop, step=step)
            except Exception as err:
                raise BadInput(f"splits.{name}.tasks[{i}] ({e.task} {e.args}): {err}") from err
        tasks.append(built[key])
    lengths = [len(t) for t in tasks]
    if split.by_proportion:
        index = mixture_index(
            lengths,
            seed,
            proportions=[e.proportion for e in split.entries],
            stopping=split.stopping,
            shuffle=split.mode == "shuffle",
        )
    else:
        weights = [
            e.repeat if e.repeat is not None else e.weight if e.weight is not None else 1.0
            for e in split.entries
        ]
        index = mixture_index(lengths, seed, weights, shuffle=split.mode == "shuffle")
    if len(index) == 0:
        raise BadInput(f"split {name!r} has no rows")
    return SplitPlan(name, split.entries, tasks, index)


def few_shot_rows(task: Task, local: int, k: int) -> list[int]:
    """k other rows of the task to show as solved examples: chosen per row, the same for every seed."""
    n = len(task)
    if k >= n:
        raise BadInput(f"few_shot={k} needs more than {k} rows in {task.name}, which has {n}")
    picks = random.Random(f"few-shot:{local}").sample(range(n - 1), k)
    return [p + (p >= local) for p in picks]  # skip the row itself


def _message(m: dict) -> dict:
    parts = m["content"] if isinstance(m["content"], list) else None
    return {"role": m["role"], "content": content_text(m["content"]), "parts": parts}


def make_row(task: Task, entry: Entry, local: int, example_id: int) -> dict[str, Any]:
    """One exported row: the conversation split into prompt (+ system, few-shot) and the final answer."""
    conv = task[local]
    messages = list(conv["messages"])
    final = [messages.pop()] if messages[-1]["role"] == "assistant" else []
    # a conversation's own system message (SmolTalk has some) wins over the spec's, and stays first
    system = [messages.pop(0)] if messages and messages[0]["role"] == "system" else []
    if not system and entry.system_prompt:
        system = [{"role": "system", "content": entry.system_prompt}]
    shots = []
    for j in few_shot_rows(task, local, entry.few_shot) if entry.few_shot else []:
        shot = [m for m in task[j]["messages"] if m["role"] != "system"]
        if shot[-1]["role"] != "assistant":
            raise BadInput(f"few_shot needs solved examples, but {entry.name} rows have no assistant answer")
        shots += shot
    prompt = [_message(m) for m in system + shots + messages]
    info = {k: v for k, v in conv.items() if k != "messages"}
    info["task_row"] = local
    return {
        "example_id": example_id,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "answer": task.reference_answer(conv),
        "info": json.dumps(info, sort_keys=True, ensure_ascii=False),
        "task": entry.name,
        "messages": prompt + [_message(m) for m in final],
    }


def render_rows(plan: SplitPlan, start: int, stop: int, shuffled: bool = True) -> list[dict[str, Any]]:
    """Rows at positions [start, stop) of the split (of its unshuffled concatenation if not `shuffled`)."""
    index = plan.index if shuffled else MixtureIndex(plan.index.components, shuffle=False)
    comps, locals_, flats = index.lookup(np.arange(start, stop))
    return [
        make_row(plan.tasks[c], plan.entries[c], int(loc), int(f))
        for c, loc, f in zip(comps.tolist(), locals_.tolist(), flats.tolist())
    ]


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as Parquet, written the same way every time so equal rows give equal bytes."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=10_000, write_statistics=False)
    return sink.getvalue().to_pybytes()
