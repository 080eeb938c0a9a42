"""The library view of a scan, for notebooks: the same code the CLI runs, without a command line.

    from taskray.catalog import Catalog
    cat = Catalog("taskray-out/scan")        # or "s3://bucket/scan"
    cat.summary()["total"]
    cat.sample(3, source="nl2bash__nl2bash")  # rows with their instruction text
    cat.export("verified/", where=["verifier_kind=pytest"], fmt="harbor")

`read_tasks` is how other jobs (the TaskTrove task of `mix`) read verified tasks, either through a
catalog or straight from TaskTrove-format shards.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

import pyarrow as pa

from taskray.blob import parse_blob
from taskray.detect import parse_and_detect
from taskray.export import export, fetch_blobs, select
from taskray.report import read_catalog, summarize
from taskray.sources import iter_task_batches, list_shards
from taskray.storage import Store


def _is_scan_output(url: str) -> bool:
    return Store(url).exists("plan.json")  # a scan writes its plan before anything else


class Catalog:
    def __init__(self, dest: str):
        self.dest = dest

    def table(self, columns: list[str] | None = None) -> pa.Table:
        return read_catalog(self.dest, columns)

    def summary(self) -> dict:
        store = Store(self.dest)
        if store.exists("summary.json"):
            return json.loads(store.read_bytes("summary.json"))
        return summarize(self.table())

    def sample(
        self, n: int = 5, source: str | None = None, where: list[str] = (), seed: int = 0
    ) -> list[dict]:
        """`n` random catalog rows (deterministic for a seed), each with `instruction` and `files`."""
        table = select(self.dest, list(where), f"^{re.escape(source)}$" if source else None)
        picks = sorted(random.Random(seed).sample(range(table.num_rows), min(n, table.num_rows)))
        rows = table.take(picks).to_pylist()
        blobs = {}
        for shard in {r["shard"] for r in rows}:  # one read per shard, not per row
            blobs[shard] = fetch_blobs(shard, [r["row"] for r in rows if r["shard"] == shard])
        for row in rows:
            parsed = parse_blob(blobs[row["shard"]][row["row"]][1])
            row["instruction"] = _instruction(parsed)
            row["files"] = sorted(parsed.members)
        return rows

    def export(
        self,
        out: str,
        where: list[str] = ("has_verifier",),
        source_filter: str | None = None,
        fmt: str = "harbor",
    ) -> dict:
        return export(self.dest, out, list(where), source_filter, fmt)


def _instruction(parsed) -> str:
    text = parsed.text("instruction.md")
    if text is None and parsed.format in ("json", "jsonl"):
        row = parsed.data[0] if parsed.format == "jsonl" else parsed.data
        if isinstance(row, dict):
            text = next(
                (str(row[k]) for k in ("instruction", "problem", "prompt", "question", "text") if k in row),
                None,
            )
    if text is None and "task.yaml" in parsed.files:
        import yaml

        try:
            task = yaml.safe_load(parsed.text("task.yaml"))
        except (yaml.YAMLError, RecursionError):
            task = None
        text = task.get("instruction") if isinstance(task, dict) else None
        text = text if isinstance(text, str) else None
    return text if text is not None else (parsed.text("<text>") or "")


def _task_row(source: str, path: str, blob: bytes) -> dict:
    parsed, det = parse_and_detect(blob)
    return {
        "source": source,
        "path": path,
        "instruction": _instruction(parsed),
        "format": parsed.format,
        "error": parsed.error,
        **det.as_row(),
    }


def read_tasks(url: str, verified_only: bool = True, source_filter: str | None = None) -> Iterator[dict]:
    """Tasks with their instruction and detection fields, in a stable order (source, shard, row).

    `url` is a scan's DEST (its catalog decides which tasks are verified) or TaskTrove-format shards
    (detection runs here, on the fly).
    """
    if _is_scan_output(url):
        if not Store(url).exists("summary.json"):  # written last: without it the catalog may be partial
            raise ValueError(
                f"{url}: this scan is unfinished (no summary.json); rerun `taskray scan` into it"
            )
        table = select(url, ["has_verifier"] if verified_only else [], source_filter)
        by_shard: dict[str, list[dict]] = {}
        for row in table.to_pylist():
            by_shard.setdefault(row["shard"], []).append(row)
        for shard, rows in by_shard.items():
            blobs = fetch_blobs(shard, [r["row"] for r in rows])
            for row in rows:
                path, blob = blobs[row["row"]]
                yield {**row, "instruction": _instruction(parse_blob(blob))}
        return
    for shard in list_shards(url, source_filter):
        for paths, blobs in iter_task_batches(shard.url):
            for p, blob in zip(paths, blobs):
                task = _task_row(shard.source, p, blob)
                if task["has_verifier"] or not verified_only:
                    yield task
