"""Export tasks selected from a scan catalog as Harbor folders or as TaskTrove-format shards.

The catalog keeps, for every task, the input file (`shard`) and row it came from, so export reads back
only the row groups that hold selected rows. One item per input shard, run by the shared runner; each
writes its own outputs:

- `--as tasktrove`: `<source>/<shard>.parquet` (the input's layout) with the two TaskTrove columns, blobs
  byte-identical;
- `--as harbor`: `<source>/<task>/...` files from a safe extraction (the same member filter the scanner
  uses: no `..`, no absolute paths, no links or devices ever reach the disk).

`export.json`, listing what was written, is written last: its presence means the export is complete.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from taskray.core.console import say
from taskray.core.runner import finished_items, mark_complete, run_items
from taskray.core.storage import Store
from taskray.errors import BadInput
from taskray.scan.blob import BlobLimits, decompress, executable_members, normalise_join, parse_blob, want_all
from taskray.scan.catalog import fetch_blobs, is_scan_output, require_finished_scan, select
from taskray.scan.sources import TASKTROVE_SCHEMA, safe_part, shard_key

EXPORT_FORMATS = ("harbor", "tasktrove")
# Export keeps every member, however large, up to the scanner's decompression cap.
EXPORT_LIMITS = BlobLimits(max_kept_bytes=BlobLimits().max_raw_bytes)
_PAYLOAD_NAME = {"json": "task.json", "jsonl": "task.jsonl", "text": "task.txt", "binary": "task.bin"}


def task_folder_name(path: str, row: int) -> str:
    """A filesystem-safe, unique folder name for a task (paths may repeat or hold odd characters)."""
    return f"{safe_part(path or '')[:120]}-{row}"


def harbor_files(blob: bytes) -> dict[str, bytes]:
    """The files of one task as they would be extracted; unsafe members never appear."""
    parsed = parse_blob(blob, want=want_all, limits=EXPORT_LIMITS)
    if parsed.error:
        raise ValueError(parsed.error)
    if parsed.format in ("tar", "zip"):
        return parsed.files
    return {_PAYLOAD_NAME[parsed.format]: _payload(blob)}


def _payload(blob: bytes) -> bytes:
    return decompress(blob, EXPORT_LIMITS)[0]


def export_shard(item: dict, out_url: str, fmt: str) -> dict:
    """Export the selected rows of one input shard; returns what was written."""
    store = Store(out_url)
    blobs = fetch_blobs(item["shard"], item["rows"], dict(zip(item["rows"], item["sha256"])))
    written, failed = [], []
    if fmt == "tasktrove":
        rel = f"{safe_part(item['source'])}/{shard_key(item['shard'], item['source'])}.parquet"
        table = pa.table(
            {"path": [blobs[r][0] for r in item["rows"]], "task_binary": [blobs[r][1] for r in item["rows"]]},
            schema=TASKTROVE_SCHEMA,
        )
        store.put_staged(rel, lambda local: pq.write_table(table, local))
        return {"written": [rel], "failed": []}
    for r in item["rows"]:
        path, blob = blobs[r]
        folder = f"{safe_part(item['source'])}/{task_folder_name(path, r)}"
        try:
            files = harbor_files(blob)
            runnable = executable_members(blob, EXPORT_LIMITS)
        except (ValueError, tarfile.TarError, zipfile.BadZipFile) as e:
            failed.append(f"{path}: {e}")
            continue
        for name, data in sorted(files.items()):
            normalise_join(folder, name)  # belt and braces: refuses anything that would leave the folder
            store.write_bytes(f"{folder}/{name}", data, executable=name in runnable)
        written.append(folder)
    return {"written": written, "failed": failed}


class ShardExporter:
    """The runner's worker: exports one input shard's selected rows per call."""

    def __init__(self, out_url: str, fmt: str) -> None:
        self.out_url, self.fmt = out_url, fmt

    def __call__(self, item: dict) -> dict:
        return export_shard(item, self.out_url, self.fmt)


def export(
    catalog_url: str,
    out: str,
    where: list[str] = ("has_verifier",),
    source_filter: str | None = None,
    fmt: str = "harbor",
    num_cpus: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the selected tasks to OUT; returns the manifest that is also written as OUT/export.json.

    Reads only finished scans. OUT must be empty or hold this same export (which is then resumed);
    `overwrite` empties it first."""
    from taskray.core.raycluster import init_ray

    if fmt not in EXPORT_FORMATS:
        raise BadInput(f"--as {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if not is_scan_output(catalog_url):
        raise BadInput(
            f"{catalog_url}: not a scan's output (no plan.json); expected `taskray scan --out` DEST"
        )
    require_finished_scan(catalog_url)
    store = Store(out)
    store.check_writable("OUT")
    table = select(catalog_url, list(where), source_filter)
    if table.num_rows == 0:
        say("export", f"warning: no task matches {' and '.join(where) or 'the selection'} in {catalog_url}")
    by_shard: dict[tuple[str, str], list[int]] = defaultdict(list)
    sha: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, shard, row, digest in zip(
        *(table[c].to_pylist() for c in ("source", "shard", "row", "blob_sha256"))
    ):
        by_shard[(source, shard)].append(row)
        sha[(source, shard)].append(digest)
    items = {
        f"{safe_part(s)}/{shard_key(sh, s)}": {"source": s, "shard": sh, "rows": rows, "sha256": sha[(s, sh)]}
        for (s, sh), rows in sorted(by_shard.items())
    }
    say("export", f"{table.num_rows:,} tasks from {len(items)} shards -> {out} as {fmt}")
    plan = {"catalog": catalog_url, "where": list(where), "source_filter": source_filter, "format": fmt}
    plan_id = hashlib.sha256(json.dumps({**plan, "items": items}, sort_keys=True).encode()).hexdigest()
    if overwrite:
        say("export", f"--overwrite: removed {store.delete_all()} files from {out}")
    done = finished_items(store, plan_id)
    if not done and next(iter(store.list()), None) is not None:
        raise BadInput(
            f"OUT {out} is not empty and holds no part of this export; use an empty folder, or --overwrite"
        )
    store.delete("export.json")  # present only once this export is complete
    todo = {k: v for k, v in items.items() if k not in done}
    if todo:
        init_ray(num_cpus)
        for key, result in run_items(todo, ShardExporter, store, plan_id, {"out_url": out, "fmt": fmt}):
            done[key] = result
            say(
                "export",
                f"{sum(len(r['written']) for r in done.values()):,} written, "
                f"{sum(len(r['failed']) for r in done.values()):,} unreadable",
            )
    manifest = {
        **plan,
        "tasks": table.num_rows,
        "written": sorted(w for r in done.values() for w in r["written"]),
        "failed": sorted(f for r in done.values() for f in r["failed"]),
    }
    mark_complete(store, "export.json", manifest)
    return manifest
