"""Find the TaskTrove shards behind a SOURCE: a Hub dataset id, an `hf://` path, `s3://`, or a folder.

TaskTrove is one folder per source, `<org>__<name>/tasks.parquet`; the source of a row is the name of the
folder its parquet file sits in (not a prefix of its `path`). Listing happens once, on the driver; workers
get the exact file URLs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from taskray.core.storage import arrow_filesystem
from taskray.errors import BadInput, StorageError, one_line

HUB_DATASET = "open-thoughts/TaskTrove"
TASKTROVE_SCHEMA = pa.schema([("path", pa.string()), ("task_binary", pa.binary())])
_DENIED = re.compile(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|\b40[13]\b")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Shard:
    source: str  # the folder name, e.g. "nl2bash__nl2bash"
    url: str  # what arrow_filesystem() opens: local path, s3://..., hf://...
    size: int


EXPECTED_SCHEMA = "path: string, task_binary: binary (large_string / large_binary too)"


@dataclass(frozen=True)
class InputFile:
    """What a scan read from one shard: enough to tell, on a rerun, whether the file is still the same."""

    url: str
    size: int
    mtime_ns: int | None  # None where the filesystem has no modification time (the Hub)
    rows: int
    row_groups: tuple[int, ...]  # rows per row group
    footer_sha256: str  # the Parquet footer: row group offsets, sizes and statistics

    def identity(self) -> dict:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "rows": self.rows,
            "footer_sha256": self.footer_sha256,
        }


def read_input(url: str) -> InputFile:
    """Check one shard against the TaskTrove schema and record its identity; reads only the footer."""
    fs, path = arrow_filesystem(url)
    info = fs.get_file_info(path)
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            if size < 12:
                raise pa.ArrowInvalid(f"{size} bytes")
            f.seek(size - 8)
            footer_len = int.from_bytes(f.read(4), "little")
            f.seek(max(0, size - 8 - footer_len))
            footer = f.read(footer_len)
            pf = pq.ParquetFile(f)
            schema, meta = pf.schema_arrow, pf.metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise BadInput(f"{url}: not a readable parquet file ({one_line(e, 200)})") from None
    check_schema(url, schema)
    return InputFile(
        url=url,
        size=size,
        mtime_ns=info.mtime_ns,
        rows=meta.num_rows,
        row_groups=tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)),
        footer_sha256=hashlib.sha256(footer).hexdigest(),
    )


def check_schema(url: str, schema: pa.Schema) -> None:
    problems = []
    for name, ok in (
        ("path", (pa.string(), pa.large_string())),
        ("task_binary", (pa.binary(), pa.large_binary())),
    ):
        if name not in schema.names:
            problems.append(f"no column {name!r}")
        elif schema.field(name).type not in ok:
            problems.append(f"{name} is {schema.field(name).type}")
    if problems:
        raise BadInput(f"{url}: {'; '.join(problems)}; a TaskTrove shard has {EXPECTED_SCHEMA}")


def iter_task_batches(
    url: str, row_groups: list[int] | None = None, batch_rows: int = 256
) -> Iterator[tuple[list[str | None], list[bytes | None]]]:
    """(paths, blobs) in batches of `batch_rows` from one TaskTrove shard: at most one batch of blobs is
    in memory at a time. Nulls stay None (the catalog makes them error rows). A file that cannot be read
    to the end (a corrupt page) is bad input, named."""
    fs, path = arrow_filesystem(url)
    try:
        with fs.open_input_file(path) as f:
            # use_threads=False: a reader is one CPU's worth of work (one actor per CPU), and decoding on
            # pyarrow's thread pool as well only adds threads that compete for the same cores
            batches = pq.ParquetFile(f).iter_batches(
                batch_size=batch_rows,
                row_groups=row_groups,
                columns=["path", "task_binary"],
                use_threads=False,
            )
            for batch in batches:
                yield batch.column(0).to_pylist(), batch.column(1).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise BadInput(f"{url}: the input file is gone (was it moved since the scan?)") from None
        raise BadInput(
            f"{url}: cannot be read ({one_line(e, 200)}); expected a TaskTrove shard with {EXPECTED_SCHEMA}"
        ) from None


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
    raise BadInput(f"SOURCE {source!r}: no such folder, and not a Hub id (org/name) or URL")


def list_shards(source: str, source_filter: str | None = None) -> list[Shard]:
    """All `*.parquet` files under SOURCE, sorted, each with the source (folder) name it belongs to."""
    url = normalise_source(source)
    fs, root = arrow_filesystem(url)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise BadInput(f"SOURCE {source!r}: {root} does not exist")
        if info.type == pafs.FileType.File:
            files = [info]
            base = root.rsplit("/", 2)[0] if root.count("/") >= 2 else ""
        else:
            files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            base = root
    except (BadInput, PermissionError):
        raise
    except Exception as e:  # the Hub or S3 unreachable, offline, denied: one line, not a traceback
        if _DENIED.search(str(e)):
            raise BadInput(
                f"SOURCE {source!r}: access denied ({one_line(e, 160)}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or HF_TOKEN)"
            ) from e
        where = "the Hugging Face Hub" if url.startswith("hf://") else url.split("/")[0] + "//"
        raise StorageError(
            f"SOURCE {source!r}: cannot list it on {where} ({type(e).__name__}: {one_line(e, 200)})"
        ) from e
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
        raise BadInput(f"SOURCE {source!r}: no parquet shards{what} under {root}")
    return sorted(shards, key=lambda s: (s.source, s.url))
