"""The mix job: render a TaskMixture's splits on Ray and export them as Parquet shards.

Every row is a position of the mixture; shard i holds positions [i*R, (i+1)*R). Any worker can render any
shard on its own (the index is a closed form, tasks are rebuilt from the spec), so shards come out
byte-identical however many CPUs or nodes Ray has. The shared runner (core/runner.py) records each shard
after it is stored and skips recorded ones on a rerun; `manifest.json` (spec, inputs, rows per task,
sha256 and rows per shard) is written last, so a reader that waits for it never sees half an export.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from functools import lru_cache
from typing import Any

import numpy as np

from taskray.core.console import Progress, say
from taskray.core.runner import finished_items, mark_complete, run_items
from taskray.core.storage import MULTIPART_THRESHOLD, Store
from taskray.errors import BadInput
from taskray.mix.spec import MixSpec, parse_spec
from taskray.mix.split import SCHEMA, SplitPlan, build_split, make_row, parquet_bytes, render_rows
from taskray.tasks.mixture import MixtureIndex

FORMAT = "taskray-mix/1"


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


@lru_cache(maxsize=4)
def _worker_plan(spec_json: str, split: str) -> SplitPlan:
    # A worker builds a split's tasks once, then renders many shards.
    spec = parse_spec(json.loads(spec_json))
    return build_split(split, spec.splits[split], spec.seed)


class ShardRenderer:
    """The runner's worker: renders positions [start, stop) of a split and stores the shard."""

    def __init__(self, spec_json: str, out: str, multipart_mb: float | None) -> None:
        self.spec_json, self.store = spec_json, Store(out)
        self.threshold = int(multipart_mb * 2**20) if multipart_mb else MULTIPART_THRESHOLD

    def __call__(self, item: dict) -> dict[str, Any]:
        plan = _worker_plan(self.spec_json, item["split"])
        data = parquet_bytes(render_rows(plan, item["start"], item["stop"]))
        name = item["path"]
        self.store.put_staged(name, lambda local: local.write_bytes(data), multipart_threshold=self.threshold)
        return {
            "path": name,
            "rows": item["stop"] - item["start"],
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


def mix(spec: MixSpec, out: str, num_cpus: int | None = None, multipart_mb: float | None = None) -> dict:
    """Build every split of `spec` and export it to `out` (a folder or s3://bucket/prefix); returns the
    manifest. Resumes a crashed export of the same spec; refuses a DEST holding a different one."""
    t0 = time.monotonic()
    store = Store(out)
    store.check_writable("--out")
    plans = {name: build_split(name, split, spec.seed) for name, split in spec.splits.items()}
    inputs = {
        name: [{"task": e.name, "source": t.fingerprint()} for e, t in zip(p.entries, p.tasks)]
        for name, p in plans.items()
    }
    layout = {name: rows_per_shard(p, spec) for name, p in plans.items()}
    pid = plan_id(spec, inputs, layout)
    shards = {name: plan_shards(len(p), layout[name], name) for name, p in plans.items()}
    say(
        "mix",
        f"planned {', '.join(f'{n}: {len(p)} rows in {len(shards[n])} shards' for n, p in plans.items())}"
        f" ({time.monotonic() - t0:.1f}s)",
    )

    if store.exists("manifest.json"):
        manifest = json.loads(store.read_bytes("manifest.json"))
        if manifest.get("plan_id") == pid:
            say("mix", f"{out} already holds this export (manifest.json); nothing to do")
            return manifest
        raise BadInput(
            f"{out} already holds a different export (manifest.json, plan "
            f"{manifest.get('plan_id')}); choose another --out"
        )
    done = finished_items(store, pid)
    items = {
        name: {"split": split, "path": name, "start": a, "stop": b}
        for split, lst in shards.items()
        for name, a, b in lst
    }
    todo = {k: v for k, v in items.items() if k not in done}
    if done:
        say("mix", f"resuming: {len(done)} shards already stored, {len(todo)} to go")
    if todo:
        import ray

        from taskray.core.raycluster import init_ray

        init_ray(num_cpus=num_cpus)
        say("mix", f"rendering on Ray with {ray.cluster_resources().get('CPU', 0):g} CPUs")
        total_rows = sum(v["stop"] - v["start"] for v in todo.values())
        progress, rows_done = Progress("mix", len(todo)), 0
        worker_args = {
            "spec_json": json.dumps(spec.raw, sort_keys=True),
            "out": out,
            "multipart_mb": multipart_mb,
        }
        for key, receipt in run_items(todo, ShardRenderer, store, pid, worker_args):
            done[key] = receipt
            rows_done += receipt["rows"]
            progress.update(
                len(done) - (len(items) - len(todo)),
                f"{len(done)}/{len(items)} shards, {rows_done}/{total_rows} rows"
                f" ({rows_done / progress.elapsed:,.0f} rows/s)",
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
    mark_complete(store, "manifest.json", manifest)
    say("mix", f"wrote {out}/manifest.json ({time.monotonic() - t0:.1f}s)")
    return manifest
