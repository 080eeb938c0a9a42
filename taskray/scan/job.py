"""The scan job: stream TaskTrove shards across Ray actors, detect verifiers, write a resumable catalog.

The unit of work is a *piece*: a run of whole row groups (up to 20k rows; a 64th of a smaller corpus) of
one input parquet file. Each piece is read, parsed and written by one call of a long-lived Ray actor
(`PieceScanner`) to its own catalog file, named after the input file and row range; the shared runner
(core/runner.py) skips pieces an earlier run finished and records each one as it completes. So:

- exactly once: a piece's output is written atomically, then its receipt; a rerun after a crash redoes
  only the pieces without a receipt, and rewrites the same bytes if it redoes one;
- bounded memory: a worker holds one batch of blobs at a time and keeps only the small catalog rows;
  blobs never cross the object store and nothing shuffles them;
- the plan (which pieces, from which inputs) is saved as `plan.json`; rerunning into the same DEST with
  different inputs is refused instead of silently mixing two scans.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from taskray.core.console import Progress, say
from taskray.core.runner import finished_items, receipt_name, run_items
from taskray.core.storage import Store
from taskray.errors import BadInput
from taskray.scan.catalog import CATALOG_SCHEMA, scan_blobs
from taskray.scan.sources import (
    InputFile,
    Shard,
    iter_task_batches,
    list_shards,
    read_input,
    safe_part,
    shard_key,
)

ROWS_PER_PIECE = 20_000  # the most rows in a piece
MIN_PIECE_ROWS = 2_000
TARGET_PIECES = 64  # enough pieces that the last ones, running alone, are a small tail on a few nodes
BATCH_ROWS = 256  # blobs held in memory at once per worker


@dataclass(frozen=True)
class Piece:
    source: str
    shard: str
    start: int  # first row (inclusive), in the file's row numbering
    stop: int  # last row (exclusive)
    row_groups: tuple[int, ...]
    out: str  # relative path of the piece's catalog file

    @property
    def rows(self) -> int:
        return self.stop - self.start


def read_inputs(shards: list[Shard]) -> list[InputFile]:
    """Every shard's footer, schema check and identity, before Ray starts. In parallel: on the Hub or S3
    each one is a round trip, and there are hundreds."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(read_input, [s.url for s in shards]))


def piece_rows(inputs: list[InputFile], limit: int | None = None) -> int:
    """Rows per piece for a corpus: ROWS_PER_PIECE for large ones, smaller for smaller ones, so a scan of
    a few hundred thousand tasks is not a handful of pieces whose last one runs on one CPU. Decided by
    the inputs alone, so a rerun plans the same pieces whatever the cluster."""
    total = sum(sum(f.row_groups) for f in inputs)
    total = min(total, limit) if limit is not None else total
    return max(MIN_PIECE_ROWS, min(ROWS_PER_PIECE, total // TARGET_PIECES))


def plan_pieces(
    shards: list[Shard],
    inputs: list[InputFile],
    limit: int | None = None,
    rows_per_piece: int = ROWS_PER_PIECE,
) -> list[Piece]:
    """Split every shard into runs of whole row groups of about `rows_per_piece` rows."""
    sizes = [list(f.row_groups) for f in inputs]
    pieces: list[Piece] = []
    remaining = limit if limit is not None else float("inf")
    for shard, row_groups in zip(shards, sizes):
        key = f"{safe_part(shard.source)}/{shard_key(shard.url, shard.source)}"
        row, group, groups = 0, [], []
        for rg, n in enumerate(row_groups):
            group.append((rg, n))
            if sum(k for _, k in group) >= rows_per_piece or rg == len(row_groups) - 1:
                groups.append(group)
                group = []
        for group in groups:
            n = sum(k for _, k in group)
            take = int(min(n, remaining))
            if take <= 0:
                break
            out = f"catalog/{key}.{row:010d}-{row + take:010d}.parquet"
            pieces.append(Piece(shard.source, shard.url, row, row + take, tuple(g for g, _ in group), out))
            row += n
            remaining -= take
        if remaining <= 0:
            break
    outs = [p.out for p in pieces]
    if len(set(outs)) != len(outs):  # would lose rows silently: one piece overwriting another
        raise BadInput(
            f"two input shards map to one catalog file: {sorted(o for o in outs if outs.count(o) > 1)[:2]}"
        )
    return pieces


def scan_piece(item: dict, out_url: str) -> dict:
    """Read one piece's rows, build its catalog rows, write them atomically."""
    piece = Piece(**{**item, "row_groups": tuple(item["row_groups"])})
    store = Store(out_url)
    # the piece's catalog columns, built into one table at the end: one conversion per column, not one
    # per batch (the rows are small; the blobs are not kept)
    columns: dict[str, list] = {name: [] for name in CATALOG_SCHEMA.names}
    row, compressed = piece.start, 0
    for paths, blobs in iter_task_batches(piece.shard, list(piece.row_groups), BATCH_ROWS):
        take = min(len(paths), piece.stop - row)
        if take <= 0:
            break
        paths, blobs = paths[:take], blobs[:take]
        compressed += sum(len(b or b"") for b in blobs)
        for name, values in scan_blobs(piece.source, piece.shard, row, paths, blobs).items():
            columns[name].extend(values)
        row += take
        del blobs  # the blob column goes as soon as it is parsed
    table = pa.table(columns, schema=CATALOG_SCHEMA)
    store.put_staged(piece.out, lambda local: pq.write_table(table, local, compression="zstd"))
    return {
        "out": piece.out,
        "rows": table.num_rows,
        "compressed_bytes": compressed,
    }


class PieceScanner:
    """A long-lived Ray worker: scans whole pieces. An actor pool rather than one Ray task per
    piece: each task paid a worker lease and a scheduling round trip (a few percent of a full piece's
    work, most of a shard's small last piece), while an actor keeps its imports warm and always has the
    next piece queued."""

    # While a local Ray starts, pieces run in a child process of the driver (core/early.py), not in the
    # driver: the blobs are untrusted and parsed partly in C, so a crash must end a process whose piece
    # is run again, never the run.
    while_ray_starts = "child"

    def __init__(self, out_url: str) -> None:
        self.out_url = out_url
        # The worker's heap is mostly Ray and pyarrow objects that live as long as it does, and
        # the cyclic GC re-traversed them on every older-generation collection; frozen, they are skipped.
        gc.freeze()

    def __call__(self, item: dict) -> dict:
        return scan_piece(item, self.out_url)


@dataclass
class ScanResult:
    out: str
    pieces: int
    skipped_pieces: int
    rows_scanned: int
    seconds: float
    summary: dict


PLAN_VERSION = 2


def _plan_record(source: str, options: dict, inputs: list[InputFile], pieces: list[Piece]) -> dict:
    return {
        "version": PLAN_VERSION,
        "source": source,
        "options": options,
        "inputs": {f.url: f.identity() for f in inputs},
        "pieces": [{**asdict(p), "row_groups": list(p.row_groups)} for p in pieces],
    }


def _earlier_piece_rows(store: Store) -> int | None:
    if not store.exists("plan.json"):
        return None
    rows = json.loads(store.read_bytes("plan.json")).get("options", {}).get("rows_per_piece")
    return rows if isinstance(rows, int) and rows > 0 else None


def _check_plan(store: Store, plan: dict, rescan: bool) -> list[str]:
    """Compare with the plan a scan in DEST started from. Returns the input files whose outputs must be
    dropped and scanned again (only with `rescan`); refuses anything else that differs."""
    if not store.exists("plan.json"):
        return []
    old = json.loads(store.read_bytes("plan.json"))
    if old.get("version") != PLAN_VERSION or (old["source"], old["options"]) != (
        plan["source"],
        plan["options"],
    ):
        raise BadInput(
            f"--out {store.url} already holds a scan of other inputs (SOURCE, --source-filter, --limit or "
            "a taskray version changed); use another --out, or delete it to start over"
        )
    changed = sorted(
        url for url in {*old["inputs"], *plan["inputs"]} if old["inputs"].get(url) != plan["inputs"].get(url)
    )
    if changed and not rescan:
        what = (
            "is new"
            if changed[0] not in old["inputs"]
            else ("is gone" if changed[0] not in plan["inputs"] else "changed (size, time or content)")
        )
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise BadInput(
            f"{changed[0]} {what} since the scan in {store.url} began{more}; rerun with --rescan to scan "
            "the changed files again, or use another --out"
        )
    return changed


def _drop_stale_pieces(store: Store, old_plan: dict, new_plan: dict, changed: list[str]) -> int:
    """Delete the pieces (and receipts) of the earlier plan that the new one does not have as they
    were: those of changed files, and any that moved (a --limit reaching further or less far)."""
    keep = {json.dumps(p, sort_keys=True) for p in new_plan["pieces"] if p["shard"] not in changed}
    dropped = 0
    for piece in old_plan["pieces"]:
        if json.dumps(piece, sort_keys=True) not in keep:
            store.delete(piece["out"])
            store.delete(receipt_name(piece["out"]))
            dropped += 1
    return dropped


def _clean_staging(store: Store) -> None:
    """Temp folders from a crashed local run: never read, but no need to keep them."""
    root = Path(store.url)
    if not store.url.startswith("s3://") and root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def scan(
    source: str,
    out: str,
    source_filter: str | None = None,
    limit: int | None = None,
    num_cpus: int | None = None,
    rows_per_piece: int | None = None,
    report: bool = True,
    rescan: bool = False,
) -> ScanResult:
    """Scan SOURCE into OUT (catalog/, summary.json, report.html). Resumable; see the module docstring.

    A rerun whose input files changed since the scan in OUT began is refused, naming the file; with
    `rescan` the outputs of the changed files are dropped and those files scanned again."""
    from taskray.core.raycluster import init_ray

    started = time.perf_counter()
    store = Store(out)
    store.check_writable("--out")
    shards = list_shards(source, source_filter)
    inputs = read_inputs(shards)
    # a scan already in OUT keeps its piece size: its pieces, receipts and --rescan stay valid even when
    # the corpus (and so the size chosen for it) has changed since
    rows_per_piece = rows_per_piece or _earlier_piece_rows(store) or piece_rows(inputs, limit)
    pieces = plan_pieces(shards, inputs, limit, rows_per_piece)
    options = {"source_filter": source_filter, "limit": limit, "rows_per_piece": rows_per_piece}
    plan = _plan_record(source, options, inputs, pieces)
    changed = _check_plan(store, plan, rescan)
    if changed:
        dropped = _drop_stale_pieces(store, json.loads(store.read_bytes("plan.json")), plan, changed)
        say("scan", f"--rescan: {len(changed)} input files changed; dropped {dropped} pieces to scan again")
    if changed or not store.exists("plan.json"):
        store.write_bytes("plan.json", json.dumps(plan, indent=1).encode())
    _clean_staging(store)
    # What decides a piece's bytes is the piece itself (its input file's identity is checked above).
    plan_id = hashlib.sha256(json.dumps([PLAN_VERSION, source, options], sort_keys=True).encode()).hexdigest()
    done = finished_items(store, plan_id)
    todo = {p.out: {**asdict(p), "row_groups": list(p.row_groups)} for p in pieces if p.out not in done}
    total_rows = sum(p.rows for p in pieces)
    say(
        "scan",
        f"{len(shards)} shards, {len(pieces)} pieces, {total_rows:,} tasks; "
        f"{len(pieces) - len(todo)} pieces already done",
    )
    if todo:
        store.delete("summary.json")  # the catalog is about to change: no longer a finished scan
    rows = 0
    if todo:
        init_ray(num_cpus, background=True)  # pieces run in a child process until Ray is up
        progress = Progress("scan", len(todo))
        finished, nbytes = 0, 0
        for _, stats in run_items(todo, PieceScanner, store, plan_id, worker_args={"out_url": out}):
            finished += 1
            rows += stats["rows"]
            nbytes += stats["compressed_bytes"]
            progress.update(
                finished,
                f"{finished}/{len(todo)} pieces | {rows:,} tasks | {rows / progress.elapsed:,.0f} tasks/s | "
                f"{nbytes / progress.elapsed / 1e6:.1f} MB/s",
            )
    summary = {}
    if report:
        from taskray.scan.report import write_report

        summary = write_report(store)
        say("scan", f"wrote {store.path('summary.json')} and {store.path('report.html')}")
    return ScanResult(out, len(pieces), len(pieces) - len(todo), rows, time.perf_counter() - started, summary)
