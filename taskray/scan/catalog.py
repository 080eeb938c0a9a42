"""The catalog a scan writes: its schema, its rows, and reading them back.

One row per task, `catalog/<source>/<shard>.<first>-<last>.parquet` under a scan's DEST. `shard` and
`row` point back at the blob, so export, sampling and mix re-read only the row groups they need.

- `scan_blobs`: catalog rows for a batch of blobs (pure: the same bytes give the same rows);
- `read_catalog`, `select` (with `--where` expressions), `fetch_blobs`: reading;
- `read_tasks`: verified tasks with their instruction, for mix's TaskTrove task;
- `Catalog`: the notebook view, the same code the CLI runs.

    from taskray.scan import Catalog
    cat = Catalog("taskray-out/scan")        # or "s3://bucket/scan"
    cat.summary()["total"]
    cat.sample(3, source="nl2bash__nl2bash")  # rows with their instruction text
    cat.export("verified/", where=["verifier_kind=pytest"], fmt="harbor")
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from taskray.core.storage import Store, arrow_filesystem
from taskray.errors import BadInput
from taskray.scan.blob import parse_blob
from taskray.scan.detect import parse_and_detect
from taskray.scan.sources import iter_task_batches, list_shards

CATALOG_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("shard", pa.string()),  # the input file, so export/sample can fetch the blob again
        ("row", pa.int64()),  # row index within that file
        ("format", pa.string()),
        ("compression", pa.string()),
        ("compressed_bytes", pa.int64()),
        ("raw_bytes", pa.int64()),  # decompressed: member bytes for archives, the payload otherwise
        ("n_files", pa.int32()),
        ("n_skipped", pa.int32()),  # unsafe or non-regular members that were dropped
        ("has_verifier", pa.bool_()),
        ("verifier_kind", pa.string()),
        ("verifier_signals", pa.list_(pa.string())),
        ("has_oracle", pa.bool_()),
        ("harbor_complete", pa.bool_()),
        ("article_verified", pa.bool_()),
        ("verifier_timeout_sec", pa.float64()),
        ("agent_timeout_sec", pa.float64()),
        ("cpus", pa.float64()),
        ("memory_mb", pa.int64()),
        ("allow_internet", pa.bool_()),
        ("docker_image", pa.string()),
        ("error", pa.string()),
        ("blob_sha256", pa.string()),
    ]
)
_DETECTION_COLUMNS = (
    "has_verifier",
    "verifier_kind",
    "verifier_signals",
    "has_oracle",
    "harbor_complete",
    "article_verified",
    "verifier_timeout_sec",
    "agent_timeout_sec",
    "cpus",
    "memory_mb",
    "allow_internet",
    "docker_image",
)


def scan_blobs(
    source: str, shard: str, first_row: int, paths: list[str | None], blobs: list[bytes | None]
) -> dict[str, list]:
    """Catalog columns for a batch of rows. Pure: no Ray, no I/O; the same bytes give the same rows.

    A row that cannot be what it claims (a null blob, a null path) is an error row with its reason and
    no detection: it must never be selected, exported or mixed as a task."""
    null = [
        "task_binary is null" if b is None else "path is null" if p is None else None
        for p, b in zip(paths, blobs)
    ]
    results = [parse_and_detect(b"" if why else b) for b, why in zip(blobs, null)]
    parsed = [p for p, _ in results]
    cols: dict[str, list] = {
        "source": [source] * len(blobs),
        "path": list(paths),
        "shard": [shard] * len(blobs),
        "row": list(range(first_row, first_row + len(blobs))),
        "format": [p.format for p in parsed],
        "compression": [p.compression for p in parsed],
        "compressed_bytes": [len(b or b"") for b in blobs],
        "raw_bytes": [p.raw_bytes for p in parsed],
        "n_files": [len(p.members) for p in parsed],
        "n_skipped": [len(p.skipped) for p in parsed],
    }
    for name in _DETECTION_COLUMNS:
        cols[name] = [getattr(d, name) for _, d in results]
    cols["error"] = [why or p.error for p, why in zip(parsed, null)]
    cols["blob_sha256"] = [None if b is None else hashlib.sha256(b).hexdigest() for b in blobs]
    return {name: cols[name] for name in CATALOG_SCHEMA.names}


# -- reading ------------------------------------------------------------------------------------------
def is_scan_output(url: str) -> bool:
    return Store(url).exists("plan.json")  # a scan writes its plan before anything else


def require_finished_scan(url: str) -> None:
    if not Store(url).exists("summary.json"):  # written last: without it the catalog may be partial
        raise BadInput(f"{url}: this scan is unfinished (no summary.json); rerun `taskray scan` into it")


def read_catalog(url: str, columns: list[str] | None = None) -> pa.Table:
    """The catalog under a scan's DEST (`DEST/catalog`), or a catalog folder given directly."""
    fs, root = arrow_filesystem(url)
    base = root if root.rstrip("/").endswith("catalog") else f"{root.rstrip('/')}/catalog"
    if fs.get_file_info(base).type != pafs.FileType.Directory and not url.startswith("s3://"):
        raise BadInput(
            f"{url}: no scan catalog here (expected DEST/catalog/ written by `taskray scan --out DEST`)"
        )
    try:
        return pads.dataset(base, format="parquet", filesystem=fs).to_table(columns=columns)
    except FileNotFoundError:
        raise BadInput(
            f"{url}: no scan catalog here (expected DEST/catalog/ written by `taskray scan --out DEST`)"
        ) from None


_OPS = {
    "=": "__eq__",
    "==": "__eq__",
    "!=": "__ne__",
    ">=": "__ge__",
    "<=": "__le__",
    ">": "__gt__",
    "<": "__lt__",
}


def parse_where(expr: str, schema: pa.Schema) -> pc.Expression:
    """`has_verifier`, `!has_oracle`, `verifier_kind=pytest`, `verifier_kind!=none`, `n_files>=5`.

    The value is checked against the column's type here, so a typo is one clear line, not an Arrow error."""
    columns = schema.names
    m = re.fullmatch(r"\s*(!?)(\w+)\s*(?:(==|=|!=|>=|<=|>|<)\s*([^=<>!].*?))?\s*", expr)
    if not m or m.group(2) not in columns:
        raise BadInput(
            f"--where {expr!r}: expected COLUMN, !COLUMN or COLUMN<op>VALUE with a catalog column "
            f"({', '.join(columns)})"
        )
    neg, col, op, text = m.groups()
    kind = schema.field(col).type
    field = pc.field(col)
    if op is None:
        if kind != pa.bool_():
            raise BadInput(f"--where {expr!r}: {col} is not true/false; compare it, like {col}=VALUE")
        return ~field if neg else field
    if neg:
        raise BadInput(f"--where {expr!r}: '!' goes with a bare true/false column, not a comparison")
    if pa.types.is_list(kind):
        raise BadInput(f"--where {expr!r}: {col} is a list; only scalar columns can be compared")
    value: object = text
    try:
        if pa.types.is_boolean(kind):
            value = {"true": True, "false": False}[text.lower()]
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            value = float(text) if pa.types.is_floating(kind) else int(text)
    except (KeyError, ValueError):
        expected = "true or false" if pa.types.is_boolean(kind) else f"a number ({kind})"
        raise BadInput(f"--where {expr!r}: {text!r} is not a value of {col}; expected {expected}") from None
    return getattr(field, _OPS[op])(value)


def select(catalog_url: str, where: list[str] = (), source_filter: str | None = None) -> pa.Table:
    """Catalog rows matching every `where` expression and the source regex, in catalog order."""
    table = read_catalog(catalog_url)
    for expr in where:
        table = table.filter(parse_where(expr, table.schema))
    if source_filter:
        pattern = re.compile(source_filter)
        keep = [bool(pattern.search(s)) for s in table["source"].to_pylist()]
        table = table.filter(pa.array(keep, pa.bool_()))
    return table.sort_by([("source", "ascending"), ("shard", "ascending"), ("row", "ascending")])


def fetch_blobs(
    shard_url: str, rows: list[int], sha256: dict[int, str] | None = None
) -> dict[int, tuple[str, bytes]]:
    """(path, blob) for the given row numbers of one input file, reading only their row groups.

    With `sha256` (row -> the catalog's `blob_sha256`), every blob is checked against what the scan
    saw: a catalog never hands out a blob that changed since."""
    wanted = sorted(set(rows))
    fs, path = arrow_filesystem(shard_url)
    out: dict[int, tuple[str, bytes]] = {}
    try:
        f = fs.open_input_file(path)
    except FileNotFoundError:
        raise BadInput(
            f"{shard_url}: the input file of this catalog is gone (moved since the scan?)"
        ) from None
    with f:
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
        raise BadInput(f"{shard_url}: rows {sorted(missing)[:5]} are not there any more (input changed?)")
    for r, expected in (sha256 or {}).items():
        if expected is not None and hashlib.sha256(out[r][1]).hexdigest() != expected:
            raise BadInput(
                f"{shard_url} row {r}: the blob differs from the one the catalog scanned (the input changed "
                "since the scan); rescan it with `taskray scan ... --rescan`"
            )
    return out


class Catalog:
    """A finished or running scan's DEST, for notebooks: the same functions the commands call."""

    def __init__(self, dest: str):
        self.dest = dest

    def table(self, columns: list[str] | None = None) -> pa.Table:
        return read_catalog(self.dest, columns)

    def summary(self) -> dict:
        from taskray.scan.report import summarize

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
            mine = [r for r in rows if r["shard"] == shard]
            blobs[shard] = fetch_blobs(
                shard, [r["row"] for r in mine], {r["row"]: r["blob_sha256"] for r in mine}
            )
        for row in rows:
            parsed = parse_blob(blobs[row["shard"]][row["row"]][1])
            row["instruction"] = _instruction(parsed)
            row["files"] = sorted(parsed.members)
        return rows

    def export(self, out: str, **options) -> dict:
        """`taskray export` of this catalog; options as `taskray.scan.export.export` takes them."""
        from taskray.scan.export import export

        return export(self.dest, out, **options)

    def verify(self, out: str, **options) -> dict:
        """`taskray verify` of this catalog; options as `taskray.verify.job.verify` takes them."""
        from taskray.verify.job import verify

        return verify(self.dest, out, **options)


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
    if is_scan_output(url):
        require_finished_scan(url)
        table = select(url, ["has_verifier"] if verified_only else [], source_filter)
        by_shard: dict[str, list[dict]] = {}
        for row in table.to_pylist():
            by_shard.setdefault(row["shard"], []).append(row)
        for shard, rows in by_shard.items():
            blobs = fetch_blobs(shard, [r["row"] for r in rows], {r["row"]: r["blob_sha256"] for r in rows})
            for row in rows:
                path, blob = blobs[row["row"]]
                yield {**row, "instruction": _instruction(parse_blob(blob))}
        return
    for shard in list_shards(url, source_filter):
        for paths, blobs in iter_task_batches(shard.url):
            for p, blob in zip(paths, blobs):
                if p is None or blob is None:  # not a task (a scan makes these error rows)
                    continue
                task = _task_row(shard.source, p, blob)
                if task["has_verifier"] or not verified_only:
                    yield task
