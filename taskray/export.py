"""Export tasks selected from a scan catalog as Harbor folders or as TaskTrove-format shards.

The catalog keeps, for every task, the input file (`shard`) and row it came from, so export reads back
only the row groups that hold selected rows. One Ray task per input shard; each writes its own outputs:

- `--as tasktrove`: `<source>/<shard>.parquet` (the input's layout) with the two TaskTrove columns, blobs
  byte-identical;
- `--as harbor`: `<source>/<task>/...` files from a safe extraction (the same member filter the scanner
  uses: no `..`, no absolute paths, no links or devices ever reach the disk).

`export.json`, listing what was written, is written last: its presence means the export is complete.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taskray.blob import Limits, decompress, normalise_join, parse_blob, want_all
from taskray.report import read_catalog
from taskray.sources import TASKTROVE_SCHEMA, safe_part, shard_key
from taskray.storage import Store, arrow_filesystem

FORMATS = ("harbor", "tasktrove")
# Export keeps every member, however large, up to the scanner's decompression cap.
EXPORT_LIMITS = Limits(max_kept_bytes=Limits().max_raw_bytes)
_PAYLOAD_NAME = {"json": "task.json", "jsonl": "task.jsonl", "text": "task.txt", "binary": "task.bin"}


def parse_where(expr: str, columns: list[str]) -> pc.Expression:
    """`has_verifier`, `!has_oracle`, `verifier_kind=pytest`, `verifier_kind!=none`, `n_files>=5`."""
    m = re.fullmatch(r"\s*(!?)(\w+)\s*(?:(==|=|!=|>=|<=|>|<)\s*(.+?))?\s*", expr)
    if not m or m.group(2) not in columns:
        raise ValueError(
            f"--where {expr!r}: expected COLUMN, !COLUMN or COLUMN<op>VALUE with a catalog column "
            f"({', '.join(columns)})"
        )
    neg, col, op, value = m.groups()
    field = pc.field(col)
    if op is None:
        return ~field if neg else field
    try:
        parsed: object = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    ops = {
        "=": field.__eq__,
        "==": field.__eq__,
        "!=": field.__ne__,
        ">=": field.__ge__,
        "<=": field.__le__,
        ">": field.__gt__,
        "<": field.__lt__,
    }
    return ops[op](parsed)


def select(catalog_url: str, where: list[str] = (), source_filter: str | None = None) -> pa.Table:
    """Catalog rows matching every `where` expression and the source regex, in catalog order."""
    table = read_catalog(catalog_url)
    for expr in where:
        table = table.filter(parse_where(expr, table.column_names))
    if source_filter:
        pattern = re.compile(source_filter)
        keep = [bool(pattern.search(s)) for s in table["source"].to_pylist()]
        table = table.filter(pa.array(keep, pa.bool_()))
    return table.sort_by([("source", "ascending"), ("shard", "ascending"), ("row", "ascending")])


def fetch_blobs(shard_url: str, rows: list[int]) -> dict[int, tuple[str, bytes]]:
    """(path, blob) for the given row numbers of one input file, reading only their row groups."""
    wanted = sorted(set(rows))
    fs, path = arrow_filesystem(shard_url)
    out: dict[int, tuple[str, bytes]] = {}
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        start = 0
        i = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            hits = []
            while i < len(wanted) and wanted[i] < start + n:
                hits.append(wanted[i])
                i += 1
            if hits:
                t = pf.read_row_group(rg, columns=["path", "task_binary"])
                for r in hits:
                    out[r] = (t["path"][r - start].as_py(), t["task_binary"][r - start].as_py() or b"")
            start += n
    missing = set(wanted) - set(out)
    if missing:
        raise ValueError(f"{shard_url}: rows {sorted(missing)[:5]} are not there any more (input changed?)")
    return out


def task_folder_name(path: str, row: int) -> str:
    """A filesystem-safe, unique folder name for a task (paths may repeat or hold odd characters)."""
    return f"{safe_part(path)[:120]}-{row}"


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
    """Ray task: export the selected rows of one input shard."""
    store = Store(out_url)
    blobs = fetch_blobs(item["shard"], item["rows"])
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
        except ValueError as e:
            failed.append(f"{path}: {e}")
            continue
        for name, data in sorted(files.items()):
            normalise_join(folder, name)  # belt and braces: refuses anything that would leave the folder
            store.write_bytes(f"{folder}/{name}", data)
        written.append(folder)
    return {"written": written, "failed": failed}


def export(
    catalog_url: str,
    out: str,
    where: list[str] = ("has_verifier",),
    source_filter: str | None = None,
    fmt: str = "harbor",
    num_cpus: int | None = None,
    log=print,
) -> dict:
    """Write the selected tasks to OUT; returns the manifest that is also written as OUT/export.json."""
    import ray

    from taskray.raycluster import init_ray

    if fmt not in FORMATS:
        raise ValueError(f"--as {fmt!r}: expected one of {', '.join(FORMATS)}")
    table = select(catalog_url, list(where), source_filter)
    by_shard: dict[tuple[str, str], list[int]] = defaultdict(list)
    for source, shard, row in zip(
        table["source"].to_pylist(), table["shard"].to_pylist(), table["row"].to_pylist()
    ):
        by_shard[(source, shard)].append(row)
    items = [{"source": s, "shard": sh, "rows": rows} for (s, sh), rows in sorted(by_shard.items())]
    log(f"[export] {table.num_rows:,} tasks from {len(items)} shards -> {out} as {fmt}")
    Store(out).delete("export.json")  # present only once this export is complete
    written, failed = [], []
    if items:
        init_ray(num_cpus)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        for res in ds.map(export_shard, fn_kwargs={"out_url": out, "fmt": fmt}, num_cpus=1).iter_rows():
            written += list(res["written"])
            failed += list(res["failed"])
            log(f"[export] {len(written):,} written, {len(failed):,} unreadable")
    manifest = {
        "catalog": catalog_url,
        "where": list(where),
        "source_filter": source_filter,
        "format": fmt,
        "tasks": table.num_rows,
        "written": sorted(written),
        "failed": sorted(failed),
    }
    Store(out).write_bytes("export.json", json.dumps(manifest, indent=1).encode())
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalog", help="a scan's --out (local or s3://)")
    parser.add_argument("out", help="local folder or s3://bucket/prefix")
    parser.add_argument(
        "--where",
        action="append",
        default=None,
        help="filter, repeatable: has_verifier, !has_oracle, verifier_kind=pytest (default: has_verifier)",
    )
    parser.add_argument("--source-filter", default=None, help="regex on the source name")
    parser.add_argument("--as", dest="fmt", choices=FORMATS, default="harbor")
    parser.add_argument("--num-cpus", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = export(
            args.catalog,
            args.out,
            args.where or ["has_verifier"],
            args.source_filter,
            args.fmt,
            args.num_cpus,
        )
    except (ValueError, FileNotFoundError, re.error) as e:
        print(f"taskray export: {e}", file=sys.stderr)
        return 2
    print(
        f"exported {len(manifest['written']):,} {'shards' if args.fmt == 'tasktrove' else 'tasks'} "
        f"({len(manifest['failed'])} unreadable) to {args.out}"
    )
    return 0
