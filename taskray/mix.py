"""`taskray mix SPEC --out DEST`: render a TaskMixture on Ray and export it as Parquet shards.

Every row is a position of the mixture; shard i holds positions [i*R, (i+1)*R). Any worker can render any
shard on its own (the index is a closed form, tasks are rebuilt from the spec), so shards come out
byte-identical however many CPUs or nodes Ray has, and a rerun renders only the shards still missing.

Rows follow the `verifiers` dataset schema (example_id, prompt, answer, info as JSON, task) plus
`messages`, the whole conversation for SFT. A message's `content` is always text; an assistant message
made of tool-call parts (GSM8K, SpellingBee) also keeps them in `parts`.

The export is atomic: shards first, each followed by a small `_progress/<shard>.json` receipt (sha256,
rows), and `manifest.json` last. A reader that waits for the manifest never sees half an export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taskray import storage
from taskray.mixspec import Entry, MixSpec, SpecError, SplitSpec, load_spec, parse_spec
from taskray.mixture import Component, MixtureIndex, counts_for_proportions, counts_for_weights
from taskray.tasks import Task, task_class
from taskray.tasks.common import content_text

log = logging.getLogger("taskray.mix")

FORMAT = "taskray-mix/1"
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


class MixError(RuntimeError):
    """The export cannot go on (bad input, a DEST holding another export, a failed shard)."""


# -- planning: tasks, index, shards (plain functions, no Ray) ------------------------------------------


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
                raise MixError(f"splits.{name}.tasks[{i}] ({e.task} {e.args}): {err}") from err
        tasks.append(built[key])
    lengths = [len(t) for t in tasks]
    if split.by_proportion:
        counts = counts_for_proportions(lengths, [e.proportion for e in split.entries], split.stopping)
    else:
        weights = [
            e.repeat if e.repeat is not None else e.weight if e.weight is not None else 1.0
            for e in split.entries
        ]
        counts = counts_for_weights(lengths, weights)
    index = MixtureIndex([Component(n, c) for n, c in zip(lengths, counts)], seed, split.mode == "shuffle")
    if len(index) == 0:
        raise MixError(f"split {name!r} has no rows")
    return SplitPlan(name, split.entries, tasks, index)


def few_shot_rows(task: Task, local: int, k: int) -> list[int]:
    """k other rows of the task to show as solved examples: chosen per row, the same for every seed."""
    n = len(task)
    if k >= n:
        raise MixError(f"few_shot={k} needs more than {k} rows in {task.name}, which has {n}")
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
            raise MixError(f"few_shot needs solved examples, but {entry.name} rows have no assistant answer")
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


def rows_per_shard(plan: SplitPlan, spec: MixSpec) -> int:
    """Rows per shard for the target size, estimated from up to 256 rows spread over the split.

    The sample is taken from the unshuffled concatenation, so the shard layout does not depend on the
    seed (nor on the machine)."""
    if spec.rows_per_shard:
        return spec.rows_per_shard
    n = len(plan)
    sample = sorted(set(np.linspace(0, n - 1, min(n, 256)).astype(np.int64).tolist()))
    index = MixtureIndex(plan.index.components, shuffle=False)
    comps, locals_, flats = index.lookup(np.array(sample))
    rows = [
        make_row(plan.tasks[c], plan.entries[c], int(loc), int(f))
        for c, loc, f in zip(comps.tolist(), locals_.tolist(), flats.tolist())
    ]
    per_row = len(parquet_bytes(rows)) / len(rows)
    return max(1, int(spec.shard_size_mb * 2**20 / per_row))


def shard_name(split: str, i: int, n: int) -> str:
    return f"data/{split}-{i:05d}-of-{n:05d}.parquet"


def plan_shards(n_rows: int, per_shard: int, split: str) -> list[tuple[str, int, int]]:
    count = max(1, math.ceil(n_rows / per_shard))
    return [
        (shard_name(split, i, count), i * per_shard, min(n_rows, (i + 1) * per_shard)) for i in range(count)
    ]


def plan_id(spec: MixSpec, inputs: dict, layout: dict) -> str:
    """What decides the bytes of the shards: spec, inputs, shard layout, schema, format."""
    blob = json.dumps(
        {
            "format": FORMAT,
            "spec": spec.raw,
            "inputs": inputs,
            "layout": layout,
            "schema": SCHEMA.to_string(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# -- workers ------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _worker_plan(spec_json: str, split: str) -> SplitPlan:
    # Ray reuses worker processes: each builds a split's tasks once, then renders many shards.
    spec = parse_spec(json.loads(spec_json))
    return build_split(split, spec.splits[split], spec.seed)


def render_shard(
    spec_json: str,
    split: str,
    name: str,
    start: int,
    stop: int,
    out: str,
    pid: str,
    multipart_mb: float | None = None,
) -> dict[str, Any]:
    """Render positions [start, stop) of a split, store the shard, then its receipt."""
    plan = _worker_plan(spec_json, split)
    data = parquet_bytes(render_rows(plan, start, stop))
    receipt = {
        "plan_id": pid,
        "path": name,
        "rows": stop - start,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    store = storage.Store(out)
    threshold = int(multipart_mb * 2**20) if multipart_mb else storage.MULTIPART_THRESHOLD
    store.put_staged(name, lambda local: local.write_bytes(data), multipart_threshold=threshold)
    store.write_bytes(f"_progress/{os.path.basename(name)}.json", json.dumps(receipt).encode())
    return receipt


# -- driver -------------------------------------------------------------------------------------------


def mix(spec: MixSpec, out: str, num_cpus: int | None = None, multipart_mb: float | None = None) -> dict:
    """Build every split of `spec` and export it to `out` (a folder or s3://bucket/prefix); returns the
    manifest. Resumes a crashed export of the same spec; refuses a DEST holding a different one."""
    t0 = time.monotonic()
    plans = {name: build_split(name, split, spec.seed) for name, split in spec.splits.items()}
    inputs = {
        name: [{"task": e.name, "source": t.fingerprint()} for e, t in zip(p.entries, p.tasks)]
        for name, p in plans.items()
    }
    layout = {name: rows_per_shard(p, spec) for name, p in plans.items()}
    pid = plan_id(spec, inputs, layout)
    shards = {name: plan_shards(len(p), layout[name], name) for name, p in plans.items()}
    _say(
        f"planned {', '.join(f'{n}: {len(p)} rows in {len(shards[n])} shards' for n, p in plans.items())}"
        f" ({time.monotonic() - t0:.1f}s)"
    )

    store = storage.Store(out)
    if store.exists("manifest.json"):
        manifest = json.loads(store.read_bytes("manifest.json"))
        if manifest.get("plan_id") == pid:
            _say(f"{out} already holds this export (manifest.json); nothing to do")
            return manifest
        raise MixError(
            f"{out} already holds a different export (manifest.json, plan "
            f"{manifest.get('plan_id')}); choose another --out"
        )
    done = _receipts(store, pid, out)
    todo = [(split, name, a, b) for split, lst in shards.items() for name, a, b in lst if name not in done]
    if done:
        _say(f"resuming: {len(done)} shards already stored, {len(todo)} to go")

    if todo:
        import ray

        from taskray.raycluster import init_ray

        init_ray(num_cpus=num_cpus)
        _say(f"rendering on Ray with {ray.cluster_resources().get('CPU', 0):g} CPUs")
        remote = ray.remote(render_shard)
        spec_json = json.dumps(spec.raw, sort_keys=True)
        pending = {
            remote.remote(spec_json, split, name, a, b, out, pid, multipart_mb): name
            for split, name, a, b in todo
        }
        total_rows, started = sum(b - a for _, _, a, b in todo), time.monotonic()
        rows_done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                receipt = ray.get(ready[0])
            except Exception as err:
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(err, "cause", None) or err
                raise MixError(
                    f"shard {name} failed: {type(cause).__name__}: {cause}; "
                    f"{len(done)} shards are stored, rerun the same command to finish"
                ) from None
            done[name] = receipt
            rows_done += receipt["rows"]
            rate = rows_done / max(time.monotonic() - started, 1e-9)
            _say(
                f"{len(done)}/{sum(map(len, shards.values()))} shards, {rows_done}/{total_rows} rows"
                f" ({rate:,.0f} rows/s)"
            )

    manifest = {
        "format": FORMAT,
        "plan_id": pid,
        "name": spec.name,
        "seed": spec.seed,
        "rollouts_per_example": spec.rollouts_per_example,
        "spec": spec.raw,
        "inputs": inputs,
        "schema": SCHEMA.to_string(),
        "splits": {
            name: {
                "rows": len(p),
                "rows_per_task": p.rows_per_task(),
                "shards": [
                    {k: done[s][k] for k in ("path", "rows", "bytes", "sha256")} for s, _, _ in shards[name]
                ],
            }
            for name, p in plans.items()
        },
    }
    store.write_bytes("manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    _say(f"wrote {out}/manifest.json ({time.monotonic() - t0:.1f}s)")
    return manifest


def _receipts(store: storage.Store, pid: str, out: str) -> dict[str, dict]:
    """Shards finished by an earlier run of the same plan (a receipt is written after its shard)."""
    done = {}
    for rel in store.list("_progress"):
        receipt = json.loads(store.read_bytes(rel))
        if receipt.get("plan_id") != pid:
            raise MixError(
                f"{out} holds part of a different export ({rel}); delete it or choose another --out"
            )
        done[receipt["path"]] = receipt
    return done


def _say(msg: str) -> None:
    print(f"[mix] {msg}", file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="mixture spec (YAML)")
    parser.add_argument("--out", required=True, help="destination: a folder or s3://bucket/prefix")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of a local Ray (ignored when RAY_ADDRESS names a cluster)",
    )
    parser.add_argument(
        "--multipart-mb",
        type=float,
        default=None,
        help="upload shards above this size in parts (default: storage's 64 MiB)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec, seed=args.seed)
        manifest = mix(spec, args.out, num_cpus=args.num_cpus, multipart_mb=args.multipart_mb)
    except (SpecError, MixError) as err:
        print(f"taskray mix: {err}", file=sys.stderr)
        return 1
    rows = {name: s["rows"] for name, s in manifest["splits"].items()}
    print(json.dumps({"out": args.out, "rows": rows, "plan_id": manifest["plan_id"]}))
    return 0
