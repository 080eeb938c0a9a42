"""Find the TaskTrove shards behind a SOURCE: a Hub dataset id, an `hf://` path, `s3://`, or a folder.

TaskTrove is one folder per source, `<org>__<name>/tasks.parquet`; the source of a row is the name of the
folder its parquet file sits in (not a prefix of its `path`). Listing happens once, on the driver; workers
get the exact file URLs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from taskray.core.storage import arrow_filesystem

HUB_DATASET = "open-thoughts/TaskTrove"
TASKTROVE_SCHEMA = pa.schema([("path", pa.string()), ("task_binary", pa.binary())])
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Shard:
    source: str  # the folder name, e.g. "nl2bash__nl2bash"
    url: str  # what arrow_filesystem() opens: local path, s3://..., hf://...
    size: int


def iter_task_batches(
    url: str, row_groups: list[int] | None = None, batch_rows: int = 256
) -> Iterator[tuple[list[str], list[bytes]]]:
    """(paths, blobs) in batches of `batch_rows` from one TaskTrove shard: at most one batch of blobs is
    in memory at a time."""
    fs, path = arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        batches = pq.ParquetFile(f).iter_batches(
            batch_size=batch_rows, row_groups=row_groups, columns=["path", "task_binary"]
        )
        for batch in batches:
            yield batch.column(0).to_pylist(), [b or b"" for b in batch.column(1).to_pylist()]


def safe_part(text: str) -> str:
    """One path component that is safe as a file or folder name anywhere (local or object key)."""
    return re.sub(r"[^\w.=-]+", "_", text).strip("._") or "_"


def shard_key(url: str, source: str) -> str:
    """The shard's path below its source folder, made safe and without `.parquet`: `tasks` for TaskTrove,
    `train/0000` for the Hub's parquet conversions, so outputs named after it never collide."""
    tail = url.rsplit(f"/{source}/", 1)[-1] if f"/{source}/" in url else url.rsplit("/", 1)[-1]
    return "/".join(safe_part(p) for p in tail.removesuffix(".parquet").split("/") if p)


def normalise_source(source: str) -> str:
    """`org/name[@rev]` (when no such local folder exists) means the Hub dataset."""
    if "://" in source or Path(source).exists():
        return source
    if _HUB_ID.match(source):
        return f"hf://datasets/{source}"
    raise FileNotFoundError(f"SOURCE {source!r}: no such folder, and not a Hub id (org/name) or URL")


def list_shards(source: str, source_filter: str | None = None) -> list[Shard]:
    """All `*.parquet` files under SOURCE, sorted, each with the source (folder) name it belongs to."""
    url = normalise_source(source)
    fs, root = arrow_filesystem(url)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"SOURCE {source!r}: {root} does not exist")
    if info.type == pafs.FileType.File:
        files = [info]
        base = root.rsplit("/", 2)[0] if root.count("/") >= 2 else ""
    else:
        files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        base = root
    pattern = re.compile(source_filter) if source_filter else None
    shards = []
    prefix = url.split("://", 1)[0] + "://" if "://" in url else ""
    for f in files:
        if f.type != pafs.FileType.File or not f.path.endswith(".parquet"):
            continue
        rel = f.path[len(base) :].strip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue  # hidden or temporary files, as pyarrow datasets skip them
        source_name = rel.split("/")[0] if "/" in rel else Path(rel).stem
        if pattern and not pattern.search(source_name):
            continue
        shards.append(Shard(source_name, prefix + f.path if prefix else f.path, f.size or 0))
    if not shards:
        what = f" matching --source-filter {source_filter!r}" if source_filter else ""
        raise FileNotFoundError(f"SOURCE {source!r}: no parquet shards{what} under {root}")
    return sorted(shards, key=lambda s: (s.source, s.url))
